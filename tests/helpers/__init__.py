"""Reusable test helpers: free ports, the sipdlg server process, SIPp, netns.

Import from tests as ``from helpers import ...`` (``tests/`` is on sys.path
through ``tests/conftest.py``).
"""

from .netns import (
    IN_NETNS_ENV,
    NetnsCallError,
    call_in_netns,
    in_netns,
    netns_command,
    netns_support,
    run_in_netns,
)
from .ports import LOOPBACK, free_port, free_ports, wait_tcp
from .server import REPO_ROOT, SipdlgProcess, SipdlgStartError
from .sipmsg import SipMessage
from .sipp import (
    SCENARIO_DIR,
    Sipp,
    SippError,
    SippResult,
    SippStats,
    parse_screen_counts,
    parse_stat_file,
    read_messages,
    run_pair,
    scenario_path,
    sipp_binary,
)

__all__ = [
    "IN_NETNS_ENV",
    "LOOPBACK",
    "REPO_ROOT",
    "SCENARIO_DIR",
    "NetnsCallError",
    "SipMessage",
    "Sipp",
    "SippError",
    "SippResult",
    "SippStats",
    "SipdlgProcess",
    "SipdlgStartError",
    "call_in_netns",
    "free_port",
    "free_ports",
    "in_netns",
    "netns_command",
    "netns_support",
    "parse_screen_counts",
    "parse_stat_file",
    "read_messages",
    "run_in_netns",
    "run_pair",
    "scenario_path",
    "sipp_binary",
    "wait_tcp",
]

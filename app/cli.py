"""``sipdlg`` command line: ``serve``, ``mi`` (a small MI client) and ``mi-schema``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from .config import ConfigError, load_settings
from .tls import load_tls

#: The integer settings: flag, metavar, help (with the default).
INT_OPTIONS = """
--mi-max-body BYTES MI request size limit
--default-timeout S dialog lifetime (43200)
--hash-size N dialog hash buckets (4096)
--max-message-size BYTES SIP size limit (65536)
--delete-delay S keep ended dialogs listed (0)
--tcp-idle-timeout S close idle TCP after (120)
--gc-rescan-period S cycle rescans every S (0)
--ping-interval S seconds between pings (30)
--ping-timeout S ping answer deadline (5)
--race-condition-timeout S CANCEL/2xx race (5)
--ended-records N ended calls kept (10000)
--webhook-timeout S per webhook POST (5)
--event-queue N events queued per consumer (1000)
--fr-timeout S skip a silent next hop after (5)
--probe-interval S OPTIONS probes of next hops (0: off)
--overload-lag-ms MS shed new INVITEs past this loop lag (100; 0 off)
--overload-queue-kb KB shed past this UDP receive queue (1024; 0 off)
--overload-recover S stop shedding after S calm seconds (2)
--overload-retry-after S Retry-After of the 503s (2)
--pike-requests N requests per source IP per window, 0 off (30)
--pike-window S rate-limit window (2)
"""


def _serve_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="run the SIP proxy and the MI")
    p.add_argument("--config", metavar="FILE", help="TOML file with settings")
    p.add_argument(
        "--listen",
        action="append",
        metavar="PROTO:IP:PORT",
        help="SIP socket, OpenSIPS socket= syntax (repeatable; default udp and tcp 127.0.0.1:5060)",
    )
    p.add_argument(
        "--next-hop",
        action="append",
        metavar="[PROTO:]HOST[:PORT][;priority=N][;weight=N]",
        help="send every initial request here (PROTO udp, tcp or tls; repeatable: failover by "
        "priority, as OpenSIPS's "
        "dispatcher; a name without port is found by DNS SRV); default: by Request-URI",
    )
    p.add_argument(
        "--relay-allow",
        action="append",
        metavar="CIDR|DOMAIN",
        help="without --next-hop, where a Request-URI may lead (repeatable; default loopback)",
    )
    p.add_argument(
        "--dns-server",
        dest="dns_servers",
        action="append",
        metavar="IP[:PORT]",
        help="DNS server for RFC 3263 routing (repeatable; default /etc/resolv.conf)",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="PEM certificate (chain) of tls: sockets")
    p.add_argument("--tls-key", metavar="FILE", help="its PEM private key (default: in --tls-cert)")
    p.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="CAs that TLS servers we connect to must chain to (default: the system's)",
    )
    p.add_argument(
        "--tls-verify",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="check the certificates of TLS servers we connect to (default on)",
    )
    p.add_argument("--mi-tls-cert", metavar="FILE", help="serve the MI over HTTPS: certificate")
    p.add_argument("--mi-tls-key", metavar="FILE", help="its private key (default: in the cert)")
    p.add_argument(
        "--mi-listen", metavar="IP:PORT", help="MI HTTP address (127.0.0.1:8888), or none"
    )
    p.add_argument("--mi-token", metavar="TOKEN", help="MI credential (Bearer, or Basic password)")
    p.add_argument(
        "--mi-allow", action="append", metavar="CIDR", help="clients allowed on the MI (repeatable)"
    )
    for row in INT_OPTIONS.strip().splitlines():
        flag, metavar, text = row.split(" ", 2)
        p.add_argument(flag, type=int, metavar=metavar, help=text)
    p.add_argument(
        "--bye-on-timeout",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="BYE both sides when a dialog's lifetime runs out (default on)",
    )
    p.add_argument(
        "--ping",
        choices=["caller", "callee", "both", "none"],
        help="in-dialog pings to this side (none)",
    )
    p.add_argument(
        "--ping-method",
        choices=["options", "reinvite"],
        help="ping by OPTIONS (OpenSIPS flags P/p) or re-INVITE with the current SDP (R/r)",
    )
    p.add_argument(
        "--webhook",
        action="append",
        metavar="URL",
        help="POST every dialog state change as JSON to URL (repeatable)",
    )
    p.add_argument(
        "--pike-trusted",
        action="append",
        metavar="CIDR",
        help="sources never rate-limited, besides the next hop (repeatable)",
    )
    p.add_argument(
        "--db",
        metavar="URL",
        help="dialog persistence: sqlite:///PATH (default sqlite:///sipdlg.db under --data-dir), "
        "redis://HOST:PORT/DB, or none (memory only)",
    )
    p.add_argument("--node-id", metavar="NAME", help="this node's key prefix in Redis (1)")
    p.add_argument("--data-dir", metavar="DIR", help="where relative --db paths live (.)")
    p.add_argument(
        "--db-mode",
        choices=["realtime", "delayed", "shutdown"],
        help="when dialogs are written (OpenSIPS db_mode; realtime)",
    )
    p.add_argument(
        "--db-update-period", type=int, metavar="S", help="delayed mode write period (60)"
    )
    p.add_argument(
        "--db-sync",
        choices=["off", "normal", "full"],
        help="SQLite synchronous: normal survives a crash of sipdlg, full also of the host "
        "(normal)",
    )
    p.add_argument(
        "--ended-retention", type=int, metavar="S", help="keep ended-call records (604800 = 7 d)"
    )
    p.add_argument(
        "--server-header",
        metavar="TEXT",
        help="Server header of sipdlg's own replies, or off (sipdlg; OpenSIPS server_header)",
    )
    p.add_argument(
        "--user-agent-header",
        metavar="TEXT",
        help="User-Agent of sipdlg's own requests (BYE, CANCEL, OPTIONS), or off (sipdlg)",
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--no-uvloop", action="store_true", help="use the stock asyncio loop")


def version_text() -> str:
    """``sipdlg 0.1.0 (compiled engine: DIR)`` or ``(pure-Python engine)``: which engine
    runs decides the CPU per call (docs/performance.md)."""
    from engine import proxy

    module = Path(proxy.__file__ or "")
    if module.suffix == ".py":
        return f"sipdlg {proxy.VERSION} (pure-Python engine)"
    return f"sipdlg {proxy.VERSION} (compiled engine: {module.parent})"


class _VersionAction(argparse.Action):
    """``--version``, computed only when asked (it imports the engine)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(version_text())
        parser.exit()


def _health_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "health",
        help="ask a running sipdlg whether it takes calls (GET /health); exit 0 if it does",
    )
    p.add_argument(
        "--url",
        help="default: /health on the server of $SIPDLG_MI_URL, else http://127.0.0.1:8888/health",
    )
    p.add_argument("--timeout", type=float, default=3.0, help="seconds (3)")


def health(args: argparse.Namespace) -> int:
    """Print what ``/health`` says; 0 when ready (Docker's HEALTHCHECK runs this)."""
    import os

    from .mi.client import check_health, health_url

    ready, text = check_health(
        args.url or health_url(os.environ.get("SIPDLG_MI_URL")), args.timeout
    )
    print(text, file=sys.stdout if ready else sys.stderr)
    return 0 if ready else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="sipdlg", description="SIP dialog engine with an MI")
    parser.add_argument(
        "--version",
        action=_VersionAction,
        nargs=0,
        help="print the version and whether the engine is compiled, then exit",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    sub.add_parser("mi", help="call an MI command", add_help=False)
    sub.add_parser("mi-schema", help="print the JSON Schema of the MI")
    _health_parser(sub)
    if argv and argv[0] == "mi":
        from .mi import client as mi_client

        return mi_client.main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "health":
        return health(args)
    if args.command == "mi-schema":
        from schemas import mi_json_schema

        print(json.dumps(mi_json_schema(), indent=2))
        return 0
    return serve(args)


def serve(args: argparse.Namespace) -> int:
    cli = {k: v for k, v in vars(args).items() if k not in ("command", "config", "no_uvloop")}
    try:
        settings = load_settings(cli, args.config)
        tls = load_tls(settings)  # every certificate and key, before anything binds
        try:
            from .mi.http import check_mi_exposure

            address = settings.mi_address()
            if address is not None:
                check_mi_exposure(address[0], settings.mi_token, settings.mi_allow)
        except ImportError:
            pass
    except (ConfigError, ValueError) as exc:
        print(f"sipdlg: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from engine.dlg_db import DbError

    from .server import run

    if not args.no_uvloop:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
    try:
        asyncio.run(run(settings, tls=tls))
    except DbError as exc:
        print(f"sipdlg: cannot start: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"sipdlg: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

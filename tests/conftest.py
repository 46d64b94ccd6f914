"""Shared fixtures. Helpers live in ``tests/helpers`` (``from helpers import ...``).

Fixtures:

* ``sipp_bin``               path of ``sipp`` (skips, or fails under scripts/test.sh, if missing)
* ``sipp(scenario, **kw)``   factory → :class:`helpers.Sipp` (not started; ``.run()``)
* ``sipp_uas(scenario="uas", **kw)`` factory → a started background SIPp
* ``sipdlg_server(**opts)``  factory → a started :class:`helpers.SipdlgProcess`
* ``free_port``              the :func:`helpers.free_port` function
* ``redis_server``           a started :class:`helpers.redis_server.RedisServer` (``.url``)

Every process started through a fixture is stopped at teardown; when the test
failed, the tails of their logs are attached to the report.

``@pytest.mark.netns``: the test is re-run by a child pytest inside ``unshare -n``
(only ``lo``), or skipped with the reason when namespaces are not permitted.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from _pytest.reports import TestReport
from _pytest.runner import CallInfo
from helpers import SipdlgProcess, Sipp, sipp_binary
from helpers import free_port as _free_port
from helpers.netns import in_netns, netns_support, run_pytest_item_in_netns
from helpers.redis_server import RedisServer, redis_binary

# ------------------------------------------------------------------ hooks


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _test_failed(request: pytest.FixtureRequest) -> bool:
    node = request.node
    return any(getattr(getattr(node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    """``@pytest.mark.netns`` tests run in a child pytest inside a network namespace."""
    if item.get_closest_marker("netns") is None or in_netns():
        return None
    ihook = item.ihook
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)

    def run() -> None:
        support = netns_support()
        if not support.ok:
            pytest.skip(f"netns: {support.reason}")
        res = run_pytest_item_in_netns(item.nodeid, item.config.rootpath)
        if res.outcome == "skipped":
            pytest.skip(f"(in netns) {res.skip_reason}")
        if res.outcome != "passed":
            pytest.fail(f"failed inside network namespace:\n{res.output}", pytrace=False)

    call = CallInfo.from_call(run, when="call")
    ihook.pytest_runtest_logreport(report=TestReport.from_item_and_call(item, call))
    # The item itself was never set up here, but fixtures of earlier items kept
    # for it (module/class scope) must be finalized as pytest's own protocol
    # would (SetupState asserts on this); not via the teardown hooks, which
    # expect a set-up item.
    teardown = CallInfo.from_call(
        lambda: item.session._setupstate.teardown_exact(nextitem), when="teardown"
    )
    if teardown.excinfo is not None:
        ihook.pytest_runtest_logreport(report=TestReport.from_item_and_call(item, teardown))
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


# --------------------------------------------------------------- fixtures


@pytest.fixture(name="free_port")
def free_port_fixture() -> Callable[..., int]:
    return _free_port


@pytest.fixture(scope="session")
def sipp_bin() -> str:
    path = sipp_binary()
    if path is None:
        msg = "sipp not installed (apt-get install sip-tester; scripts/test.sh does it)"
        if os.environ.get("SIPDLG_REQUIRE_SIPP") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A started ``redis-server`` on a free loopback port (``.url``), stopped at teardown."""
    if redis_binary() is None:
        msg = "redis-server not installed (apt-get install redis-server; scripts/test.sh does it)"
        if os.environ.get("SIPDLG_REQUIRE_SIPP") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def sipp(
    sipp_bin: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Sipp]]:
    """Factory: ``sipp(scenario, **Sipp kwargs)`` → unstarted :class:`Sipp` in tmp_path."""
    made: list[Sipp] = []

    def make(scenario: str | Path, **kw: Any) -> Sipp:
        kw.setdefault("workdir", tmp_path)
        s = Sipp(scenario, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        if s.running:
            s.stop()
    if _test_failed(request):
        for s in made:
            if s.proc is not None:
                request.node.add_report_section(
                    "teardown", f"sipp {s.name}", s.collect().describe()
                )


@pytest.fixture
def sipp_uas(sipp: Callable[..., Sipp]) -> Callable[..., Sipp]:
    """Factory: ``sipp_uas(scenario="uas", **kw)`` → SIPp started in the
    background (port bound); stopped at teardown (or ``.stop()`` it yourself)."""

    def make(scenario: str | Path = "uas", **kw: Any) -> Sipp:
        kw.setdefault("timeout", 300)
        kw.setdefault("timeout_error", False)
        s = sipp(scenario, **kw)
        s.start()
        s.wait_listening()
        return s

    return make


@pytest.fixture
def sipdlg_server(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., SipdlgProcess]]:
    """Factory: ``sipdlg_server(uas_port=None, mi=True, next_hop=None, **opts)``
    → a started, ready :class:`SipdlgProcess` (see its docstring for options)."""
    procs: list[SipdlgProcess] = []

    def make(**kw: Any) -> SipdlgProcess:
        kw.setdefault("workdir", tmp_path)
        proc = SipdlgProcess(**kw)
        procs.append(proc)
        return proc.start()

    yield make
    for p in procs:
        p.stop()
    if _test_failed(request):
        for p in procs:
            request.node.add_report_section("teardown", f"sipdlg log {p.log_file}", p.log_tail())

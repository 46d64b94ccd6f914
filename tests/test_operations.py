"""What an operator meets: ``GET /health``, ``sipdlg --version``/``health``/``mi --help``, the
Server/User-Agent settings, a busy port at start, the launcher on PATH, quiet compiles, and
log lines that a flood cannot multiply (docs/operations.md)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import LOOPBACK, REPO_ROOT, SipdlgProcess, free_port

from app.config import ConfigError, load_settings
from app.observe.ratelog import MAX_CAUSES, RateLimitedLog, exception_cause

Server = Callable[..., SipdlgProcess]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``sipdlg ARGS`` as a user runs it (pure-Python engine: no build/native on the path)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SIPDLG_")}
    base.pop("PYTHONPATH", None)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd="/",  # not the checkout: `-m` would put its engine/ before PYTHONPATH's
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def get(url: str, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            status, body = reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    return status, json.loads(body) if body.startswith(b"{") else body


def health_url(server: SipdlgProcess) -> str:
    return f"http://{server.mi_listen}/health"


# -- GET /health --------------------------------------------------------------------------


def test_health_ready_with_the_default_store(sipdlg_server: Server) -> None:
    server = sipdlg_server()
    status, body = get(health_url(server))
    assert status == 200
    assert body == {"status": "ready", "mi": "ok", "sip": "ok", "store": "ok"}


def test_health_without_a_store_and_with_a_token(sipdlg_server: Server) -> None:
    """A probe holds no secret: /health answers without the token, everything else wants it."""
    server = sipdlg_server(db="none", mi_token="s3cret")
    assert get(health_url(server)) == (
        200,
        {"status": "ready", "mi": "ok", "sip": "ok", "store": "none"},
    )
    assert get(f"http://{server.mi_listen}/metrics")[0] == 401
    assert get(f"http://{server.mi_listen}/metrics", "s3cret")[0] == 200


def _writer_pids(server_pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=,args=", "--ppid", str(server_pid)], capture_output=True, text=True
    ).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "app.store.writer" in line]


def _wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_health_names_a_dead_writer_process_until_it_is_back(sipdlg_server: Server) -> None:
    server = sipdlg_server()
    assert server.proc is not None
    pids = _writer_pids(server.proc.pid)
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)  # the writer this test's server started
    assert _wait_for(lambda: get(health_url(server))[0] == 503)
    status, body = get(health_url(server))
    assert body["status"] == "not ready" and body["sip"] == "ok"
    assert "writer process" in body["store"]
    # The store starts a new writer (app/store/persistence.py) and the server is ready again.
    assert _wait_for(lambda: get(health_url(server))[0] == 200, timeout=60)


def test_health_says_not_ready_when_the_database_file_is_removed(sipdlg_server: Server) -> None:
    server = sipdlg_server()
    assert server.data_dir is not None
    (server.data_dir / "sipdlg.db").unlink()
    status, body = get(health_url(server))
    assert status == 503 and "was removed" in body["store"]


# -- the command line -----------------------------------------------------------------------


def test_version_says_which_engine_runs() -> None:
    proc = cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == "sipdlg 0.1.0 (pure-Python engine)"
    native = REPO_ROOT / "build" / "native"
    if not (native / ".sources").exists():
        return  # the compiled case is covered where a build exists (tests/test_native.py)
    proc = cli("--version", env={"PYTHONPATH": str(native)})
    assert proc.stdout.startswith("sipdlg 0.1.0 (compiled engine: "), proc.stdout + proc.stderr


def test_mi_help_describes_url_and_its_variable() -> None:
    proc = cli("mi", "--help", env={"SIPDLG_MI_URL": "http://127.0.0.9:9999/mi"})
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "--url URL" in text and "$SIPDLG_MI_URL" in text
    assert "now http://127.0.0.9:9999/mi" in text
    assert "$SIPDLG_MI_TOKEN" in text


def test_health_command_exit_code(sipdlg_server: Server) -> None:
    server = sipdlg_server(db="none")
    ready = cli("health", env={"SIPDLG_MI_URL": server.mi_url})
    assert ready.returncode == 0 and json.loads(ready.stdout)["status"] == "ready"
    down = cli("health", "--url", f"http://{LOOPBACK}:{free_port('tcp')}/health")
    assert down.returncode == 1 and "cannot reach" in down.stderr


def test_busy_udp_port_exits_with_one_line_naming_the_socket(tmp_path: Path) -> None:
    port = free_port("both")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind((LOOPBACK, port))
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "app.cli",
                "serve",
                "--listen",
                f"udp:{LOOPBACK}:{port}",
                "--mi-listen",
                "none",
                "--db",
                "none",
            ],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "sipdlg:" in line]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("sipdlg: cannot start: ")
    assert f"udp:{LOOPBACK}:{port}: Address already in use" in errors[0]


# -- Server / User-Agent settings ---------------------------------------------------------


def test_header_settings_from_every_source(tmp_path: Path) -> None:
    assert load_settings({}, None, {}).header_values() == ("sipdlg", "sipdlg")
    toml = tmp_path / "s.toml"
    toml.write_text('server_header = "Server: Edge"\nuser_agent_header = "off"\n')
    assert load_settings({}, str(toml), {}).header_values() == ("Edge", "")
    env = {"SIPDLG_SERVER_HEADER": "", "SIPDLG_USER_AGENT_HEADER": "UA 1"}
    assert load_settings({}, str(toml), env).header_values() == ("", "UA 1")
    cli_opts = {"server_header": "OFF", "user_agent_header": "User-Agent: x"}
    assert load_settings(cli_opts, None, env).header_values() == ("", "x")


@pytest.mark.parametrize("bad", ["a\r\nVia: evil", "a\nb", "a\x00b"])
def test_header_settings_refuse_line_breaks(bad: str) -> None:
    with pytest.raises(ConfigError, match="server_header"):
        load_settings({"server_header": bad}, None, {})


def test_server_header_on_the_wire(tmp_path: Path, sipdlg_server: Server) -> None:
    """An OPTIONS for us (no next hop would take it: Max-Forwards 0) gets the 483 with the
    Server header as set, and none when off."""
    options = (
        "OPTIONS sip:{host}:{port} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP {host}:{me};branch=z9hG4bK-srv{n}\r\n"
        "Max-Forwards: 0\r\nFrom: <sip:a@{host}>;tag=1\r\nTo: <sip:b@{host}>\r\n"
        "Call-ID: srv{n}@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    for n, (setting, expected) in enumerate([(None, "sipdlg"), ("Edge", "Edge"), ("off", None)]):
        server = sipdlg_server(mi=False, db="none", server_header=setting)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((LOOPBACK, 0))
            sock.settimeout(10)
            text = options.format(host=LOOPBACK, port=server.port, me=sock.getsockname()[1], n=n)
            sock.sendto(text.encode(), (LOOPBACK, server.port))
            reply = sock.recv(65535).decode()
        assert reply.startswith("SIP/2.0 483 ")
        servers = [line for line in reply.split("\r\n") if line.lower().startswith("server:")]
        assert servers == ([f"Server: {expected}"] if expected else [])


# -- launcher, compile ----------------------------------------------------------------------


def test_serve_sh_puts_a_launcher_on_path(tmp_path: Path) -> None:
    """ensure_launcher (scripts/_env.sh, run by serve.sh) links scripts/sipdlg into a
    directory of PATH; the link runs this checkout's sipdlg from anywhere."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    venv = Path(sys.executable).parent.parent
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "SIPDLG_LAUNCHER_DIR": str(bin_dir),
        "SIPDLG_VENV": str(venv),
        "HOME": str(tmp_path),
    }
    setup = subprocess.run(
        ["bash", "-c", f"source {REPO_ROOT}/scripts/_env.sh && ensure_launcher"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert setup.returncode == 0, setup.stderr
    assert f"installed {bin_dir}/sipdlg" in setup.stderr
    assert (bin_dir / "sipdlg").resolve() == REPO_ROOT / "scripts" / "sipdlg"
    run = subprocess.run(
        ["sipdlg", "--version"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("sipdlg 0.1.0 (")
    again = subprocess.run(
        ["bash", "-c", f"source {REPO_ROOT}/scripts/_env.sh && ensure_launcher"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert again.returncode == 0 and again.stderr == ""  # already on PATH: nothing to say


def test_compile_output_goes_to_the_log(tmp_path: Path) -> None:
    """scripts/compile.py hides what mypyc and the C compiler print (they write to the file
    descriptors directly), and restores the terminal afterwards."""
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        import compile as compile_script  # scripts/ is not a package
    finally:
        sys.path.remove(str(REPO_ROOT / "scripts"))
    log = tmp_path / "compile.log"
    probe = [
        sys.executable,
        "-c",
        "import sys; print('cc -O3 x.c'); print('warn', file=sys.stderr)",
    ]
    with compile_script.output_to(str(log)):
        subprocess.run(probe, check=True)
        os.write(1, b"mypyc side\n")
    assert log.read_text().split() == ["cc", "-O3", "x.c", "warn", "mypyc", "side"]


# -- log lines that a flood cannot multiply -------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rate_limited_log_one_line_per_cause_and_period(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("test.ratelog"), 1.0, clock=clock)
    with caplog.at_level(logging.INFO, "test.ratelog"):
        for _ in range(1000):
            limited.info("framing", "tcp %s: bad", "peer")
            limited.info("other", "another cause")
        clock.now = 0.5
        assert not limited.info("framing", "tcp %s: bad", "peer")
        clock.now = 1.0
        assert limited.info("framing", "tcp %s: bad", "peer")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "tcp peer: bad",
        "another cause",
        "tcp peer: bad (1000 more like this in the last 1 s)",
    ]


def test_rate_limited_log_forgets_the_oldest_causes() -> None:
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("test.ratelog"), 60.0, clock=clock)
    for n in range(MAX_CAUSES + 10):
        limited.warning(f"resolve host{n}", "cannot resolve")
    assert len(limited._causes) == MAX_CAUSES
    assert limited.warning("resolve host0", "cannot resolve")  # forgotten: logged again


def test_exception_cause_names_type_and_line() -> None:
    def fails() -> None:
        raise ValueError("x")

    try:
        fails()
    except ValueError as exc:
        cause = exception_cause(exc)
    assert cause.startswith("ValueError at ") and cause.endswith(
        f"test_operations.py:{fails.__code__.co_firstlineno + 1}"
    )


async def test_an_engine_bug_logs_one_traceback_per_minute_and_counts_all(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every message that hits the same bug is counted (``sipdlg_internal_errors_total``);
    only the first writes its traceback.  (The engine has no known bug left to trigger, so
    one stands in for it.)"""
    from app.sip.service import SipService

    service = SipService(load_settings({"db": "none", "mi_listen": "none"}, None, {}))

    def bug(*args: object) -> str:
        raise KeyError("a bug")

    monkeypatch.setattr(service.engine, "receive", bug)
    with caplog.at_level(logging.ERROR, "sipdlg"):
        for n in range(500):
            service.feed(b"OPTIONS", service.sockets[0], (LOOPBACK, 5000 + n), None)
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and len(caplog.records) == 1
    assert "KeyError" in caplog.text
    assert service.internal_errors == 500


def test_mi_output_into_head_is_no_traceback(sipdlg_server: Server) -> None:
    """``sipdlg mi get_statistics all | head -0``: the reader is gone before the answer is
    written (the README pipes MI output into other commands)."""
    server = sipdlg_server(db="none")
    proc = subprocess.run(
        f"{sys.executable} -m app.cli mi --url {server.mi_url} get_statistics all | head -0",
        shell=True,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stderr == ""

"""Drive SIPp (the ``sipp`` binary, Debian package sip-tester) from tests.

SIPp always runs in the foreground of a subprocess we own (never ``-bg``),
with ``-nostdin`` and a global ``-timeout`` so it always ends. Its outputs go
to files in a work directory (normally pytest's ``tmp_path``):

* ``<name>.out``       stdout/stderr (the SIPp screen, errors)
* ``<name>.msg``       ``-trace_msg`` every message sent and received
* ``<name>.stat.csv``  ``-trace_stat`` statistics (parsed into :class:`SippStats`)
* ``<name>.screen``    ``-trace_screen`` final screen
* ``<name>.err``       ``-trace_err`` unexpected messages
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

from .ports import LOOPBACK, free_port
from .sipmsg import SipMessage

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"

Transport = Literal["u1", "un", "t1", "tn"]


def sipp_binary() -> str | None:
    """Path of the ``sipp`` binary (``$SIPP`` overrides), or None."""
    return os.environ.get("SIPP") or shutil.which("sipp")


def scenario_path(name: str | Path) -> Path:
    """``tests/scenarios/<name>.xml`` for a bare name, else ``name`` itself."""
    p = Path(name)
    if p.suffix == ".xml" or p.is_absolute() or len(p.parts) > 1:
        return p
    return SCENARIO_DIR / f"{p}.xml"


# --------------------------------------------------------------------- stats


def _int(raw: Mapping[str, str], key: str) -> int:
    try:
        return int(raw.get(key, "0") or 0)
    except ValueError:
        return 0


@dataclass(frozen=True)
class SippStats:
    """Cumulative counters from the last row of a SIPp ``-trace_stat`` file."""

    total_created: int
    successful: int
    failed: int
    current: int
    incoming: int
    outgoing: int
    retransmissions: int
    failed_unexpected: int
    failed_timeout_on_recv: int
    failed_max_udp_retrans: int
    failed_tcp_closed: int
    out_of_call_msgs: int
    dead_call_msgs: int
    raw: dict[str, str] = field(repr=False, compare=False)

    @classmethod
    def from_row(cls, raw: dict[str, str]) -> SippStats:
        return cls(
            total_created=_int(raw, "TotalCallCreated"),
            successful=_int(raw, "SuccessfulCall(C)"),
            failed=_int(raw, "FailedCall(C)"),
            current=_int(raw, "CurrentCall"),
            incoming=_int(raw, "IncomingCall(C)"),
            outgoing=_int(raw, "OutgoingCall(C)"),
            retransmissions=_int(raw, "Retransmissions(C)"),
            failed_unexpected=_int(raw, "FailedUnexpectedMessage(C)"),
            failed_timeout_on_recv=_int(raw, "FailedTimeoutOnRecv(C)"),
            failed_max_udp_retrans=_int(raw, "FailedMaxUDPRetrans(C)"),
            failed_tcp_closed=_int(raw, "FailedTcpClosed(C)"),
            out_of_call_msgs=_int(raw, "OutOfCallMsgs(C)"),
            dead_call_msgs=_int(raw, "DeadCallMsgs(C)"),
            raw=raw,
        )


def parse_stat_file(path: Path) -> SippStats | None:
    """Parse the last data row of a ``-trace_stat`` CSV (``;``-separated)."""
    try:
        text = path.read_text(encoding="latin-1")
    except FileNotFoundError:
        return None
    rows = [r for r in csv.reader(text.splitlines(), delimiter=";") if r]
    if len(rows) < 2:
        return None
    header = rows[0]
    last = next((r for r in reversed(rows[1:]) if r != header), None)
    if last is None:
        return None
    return SippStats.from_row(dict(zip(header, last, strict=False)))


_SCREEN_RE = re.compile(r"^\s*(Successful call|Failed call)\s*\|\s*\d+\s*\|\s*(\d+)", re.M)


def parse_screen_counts(path: Path) -> tuple[int, int] | None:
    """(successful, failed) cumulative counts from a ``-trace_screen`` dump."""
    try:
        text = path.read_text(encoding="latin-1")
    except FileNotFoundError:
        return None
    found = dict(_SCREEN_RE.findall(text))
    if "Successful call" not in found:
        return None
    return int(found["Successful call"]), int(found.get("Failed call", "0"))


# ------------------------------------------------------------ message traces

_TRACE_HDR = re.compile(
    rb"^-{10,} (?P<ts>\d{4}-\d\d-\d\d [\d:.]+)\r?\n"
    rb"(?P<transport>[A-Za-z0-9]+) message (?P<dir>received|sent) "
    rb"[\[(](?P<len>\d+)(?:\] bytes :| bytes\):)\r?\n\r?\n",
    re.M,
)


def read_messages(
    path: Path | str, direction: Literal["received", "sent", "all"] = "received"
) -> list[SipMessage]:
    """SIP messages from a SIPp ``-message_file`` (``-trace_msg``), in order.

    ``direction`` selects what this SIPp party received (default), sent, or all.
    Each message's text is exactly the bytes SIPp logged (CRLF kept).
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    out: list[SipMessage] = []
    for m in _TRACE_HDR.finditer(data):
        start = m.end()
        raw = data[start : start + int(m.group("len"))]
        d = m.group("dir").decode()
        if direction != "all" and d != direction:
            continue
        out.append(
            SipMessage(
                raw.decode("utf-8", errors="replace"),
                direction=d,
                transport=m.group("transport").decode(),
                timestamp=m.group("ts").decode(),
            )
        )
    return out


# ------------------------------------------------------------------- runner


class SippError(AssertionError):
    pass


@dataclass
class SippResult:
    """Outcome of one SIPp run."""

    name: str
    command: list[str]
    returncode: int
    stats: SippStats | None
    message_file: Path
    log_file: Path
    error_file: Path
    screen_file: Path

    @property
    def ok(self) -> bool:
        """SIPp's own verdict: exit code 0, all calls successful."""
        return self.returncode == 0

    @property
    def successful(self) -> int:
        return self.stats.successful if self.stats else 0

    @property
    def failed(self) -> int:
        return self.stats.failed if self.stats else 0

    def messages(
        self, direction: Literal["received", "sent", "all"] = "received"
    ) -> list[SipMessage]:
        return read_messages(self.message_file, direction)

    def describe(self, tail: int = 40) -> str:
        """Human-readable summary with the tails of the logs, for assert messages."""
        lines = [
            f"sipp {self.name}: exit {self.returncode}, stats: "
            + (
                f"created={self.stats.total_created} ok={self.stats.successful} "
                f"failed={self.stats.failed} current={self.stats.current} "
                f"unexpected={self.stats.failed_unexpected} "
                f"recv_timeouts={self.stats.failed_timeout_on_recv} "
                f"retrans={self.stats.retransmissions}"
                if self.stats
                else "none"
            ),
            "command: " + " ".join(self.command),
        ]
        for label, path in (("errors", self.error_file), ("output", self.log_file)):
            text = _tail(path, tail)
            if text:
                lines += [f"--- {label} ({path}) ---", text]
        return "\n".join(lines)


def _tail(path: Path, n: int) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    # The SIPp screen is redrawn many times; keep the last n non-empty lines.
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    return "\n".join(lines[-n:])


class Sipp:
    """One SIPp process.

    ``scenario`` is a built-in name (``"uac"``, ``"uas"``: passed as ``-sn``)
    or a scenario file: a path, or a bare name found in ``tests/scenarios/``.

    Typical use::

        with Sipp("uas", workdir=tmp_path) as uas:          # background UAS
            res = Sipp("uac", workdir=tmp_path, remote=uas.address,
                       calls=20, rate=10).run()
        assert res.ok, res.describe()
        byes = [m for m in uas.received() if m.method == "BYE"]
    """

    BUILTIN = frozenset({"uac", "uas", "uac_pcap", "regexp", "branchc", "branchs"})

    def __init__(
        self,
        scenario: str | Path,
        *,
        workdir: Path | str,
        remote: str | None = None,
        local_port: int | None = None,
        local_ip: str = LOOPBACK,
        transport: Transport = "u1",
        calls: int | None = None,
        rate: float | None = None,
        rate_period_ms: int | None = None,
        limit: int | None = None,
        pause_ms: int | None = None,
        service: str | None = None,
        timeout: float = 60.0,
        timeout_error: bool = True,
        recv_timeout_ms: int | None = None,
        auto_answer: bool = False,
        variables: Mapping[str, str | int] | None = None,
        keys: Mapping[str, str | int] | None = None,
        extra_args: Sequence[str] = (),
        name: str | None = None,
        trace_msg: bool = True,
        stat_period_s: int = 1,
    ) -> None:
        self.binary = sipp_binary()
        self.scenario = scenario
        self.workdir = Path(workdir)
        self.remote = remote
        self.local_ip = local_ip
        self.transport: Transport = transport
        self.port = (
            local_port
            if local_port is not None
            else free_port("tcp" if transport.startswith("t") else "udp")
        )
        self.calls = calls
        self.rate = rate
        self.rate_period_ms = rate_period_ms
        self.limit = limit
        self.pause_ms = pause_ms
        self.service = service
        self.timeout = timeout
        self.timeout_error = timeout_error
        self.recv_timeout_ms = recv_timeout_ms
        self.auto_answer = auto_answer
        self.variables = dict(variables or {})
        self.keys = dict(keys or {})
        self.extra_args = list(extra_args)
        self.trace_msg = trace_msg
        self.stat_period_s = stat_period_s
        stem = Path(str(scenario)).stem
        self.name = name or f"sipp-{stem}-{self.port}"
        self.message_file = self.workdir / f"{self.name}.msg"
        self.log_file = self.workdir / f"{self.name}.out"
        self.stat_file = self.workdir / f"{self.name}.stat.csv"
        self.screen_file = self.workdir / f"{self.name}.screen"
        self.error_file = self.workdir / f"{self.name}.err"
        self.proc: subprocess.Popen[bytes] | None = None
        self.result: SippResult | None = None

    # ----------------------------------------------------------- command

    @property
    def address(self) -> str:
        """``ip:port`` this SIPp listens on (what to give as a next hop)."""
        host = f"[{self.local_ip}]" if ":" in self.local_ip else self.local_ip
        return f"{host}:{self.port}"

    @property
    def command(self) -> list[str]:
        sc = str(self.scenario)
        if isinstance(self.scenario, str) and sc in self.BUILTIN:
            scen_args = ["-sn", sc]
        else:
            path = scenario_path(self.scenario)
            if not path.is_file():
                raise FileNotFoundError(f"SIPp scenario not found: {path}")
            scen_args = ["-sf", str(path)]
        cmd = [self.binary or "sipp"]
        if self.remote:
            cmd.append(self.remote)
        cmd += scen_args
        cmd += ["-i", self.local_ip, "-p", str(self.port), "-t", self.transport]
        cmd += ["-nostdin"]
        if self.service is not None:
            cmd += ["-s", self.service]
        if self.calls is not None:
            cmd += ["-m", str(self.calls)]
        if self.rate is not None:
            cmd += ["-r", _num(self.rate)]
        if self.rate_period_ms is not None:
            cmd += ["-rp", str(self.rate_period_ms)]
        if self.limit is not None:
            cmd += ["-l", str(self.limit)]
        if self.pause_ms is not None:
            cmd += ["-d", str(self.pause_ms)]
        if self.recv_timeout_ms is not None:
            cmd += ["-recv_timeout", str(self.recv_timeout_ms)]
        if self.auto_answer:
            cmd.append("-aa")
        cmd += ["-timeout", f"{max(1, round(self.timeout))}s"]
        if self.timeout_error:
            cmd.append("-timeout_error")
        for k, v in self.variables.items():
            cmd += ["-set", k, str(v)]
        for k, v in self.keys.items():
            cmd += ["-key", k, str(v)]
        if self.trace_msg:
            cmd += ["-trace_msg", "-message_file", str(self.message_file)]
        cmd += ["-trace_stat", "-stf", str(self.stat_file), "-fd", str(self.stat_period_s)]
        cmd += ["-trace_screen", "-screen_file", str(self.screen_file)]
        cmd += ["-trace_err", "-error_file", str(self.error_file)]
        cmd += self.extra_args
        return cmd

    # ------------------------------------------------------- lifecycle

    def start(self) -> Sipp:
        """Start SIPp in the background (returns self)."""
        if self.proc is not None:
            raise RuntimeError(f"{self.name} already started")
        if self.binary is None:
            raise SippError("sipp binary not found (apt-get install sip-tester)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = self.command
        with open(self.log_file, "wb") as out:
            out.write(("$ " + " ".join(cmd) + "\n").encode())
            out.flush()
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_listening(self, timeout: float = 5.0) -> None:
        """Wait until the process is alive and has bound its port (best effort).

        For UDP there is no connect test: wait until the port can no longer be
        bound by us (i.e. SIPp holds it), or the process died.
        """
        import socket

        kind = socket.SOCK_STREAM if self.transport.startswith("t") else socket.SOCK_DGRAM
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise SippError(f"{self.name} exited early\n{self.collect().describe()}")
            family = socket.AF_INET6 if ":" in self.local_ip else socket.AF_INET
            s = socket.socket(family, kind)
            try:
                s.bind((self.local_ip, self.port))
            except OSError:
                return  # taken: SIPp has it
            finally:
                s.close()
            time.sleep(0.05)
        raise SippError(f"{self.name} did not bind {self.address} within {timeout}s")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for SIPp to finish on its own (default: its -timeout + 10 s)."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} not started")
        limit = timeout if timeout is not None else self.timeout + 10
        try:
            self.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            self._kill()
            raise SippError(
                f"{self.name} still running after {limit}s, killed\n{self.collect().describe()}"
            ) from None
        return self.collect()

    def run(self, timeout: float | None = None) -> SippResult:
        """Start, wait for the end, return the result."""
        self.start()
        return self.wait(timeout)

    def stop(self, grace: float = 5.0) -> SippResult:
        """Ask SIPp to finish (SIGUSR1: no new calls, wait for running ones),
        force it (second SIGUSR1 aborts calls) after ``grace`` s, SIGKILL after
        another ``grace`` s. Returns the result (final stats are written on exit)."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} not started")
        for _ in range(2):
            if self.proc.poll() is not None:
                break
            try:
                self.proc.send_signal(signal.SIGUSR1)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
        if self.proc.poll() is None:
            self._kill()
        return self.collect()

    def _kill(self) -> None:
        assert self.proc is not None
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)

    def collect(self) -> SippResult:
        rc = self.proc.poll() if self.proc is not None else None
        stats = parse_stat_file(self.stat_file)
        self.result = SippResult(
            name=self.name,
            command=self.command,
            returncode=rc if rc is not None else -999,
            stats=stats,
            message_file=self.message_file,
            log_file=self.log_file,
            error_file=self.error_file,
            screen_file=self.screen_file,
        )
        return self.result

    # -------------------------------------------------------- messages

    def received(self) -> list[SipMessage]:
        """Messages this party has received so far (from its -message_file)."""
        return read_messages(self.message_file, "received")

    def sent(self) -> list[SipMessage]:
        return read_messages(self.message_file, "sent")

    def wait_received(
        self,
        predicate: Callable[[SipMessage], bool] | None = None,
        *,
        method: str | None = None,
        count: int = 1,
        timeout: float = 10.0,
    ) -> list[SipMessage]:
        """Poll the message file until ``count`` received messages match
        (``method`` and/or a callable ``predicate``); returns the matches."""
        deadline = time.monotonic() + timeout
        while True:
            found = [
                m
                for m in self.received()
                if (method is None or m.method == method) and (predicate is None or predicate(m))
            ]
            if len(found) >= count or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)

    # ------------------------------------------------- context manager

    def __enter__(self) -> Sipp:
        if self.proc is None:
            self.start()
            self.wait_listening()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        elif self.proc is not None:
            self.collect()


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def run_pair(
    uac: Sipp, uas: Sipp, *, timeout: float | None = None
) -> tuple[SippResult, SippResult]:
    """Run ``uas`` in the background and ``uac`` to completion; stop the UAS."""
    with uas:
        res = uac.run(timeout)
    assert uas.result is not None
    return res, uas.result


def all_methods(msgs: Iterable[SipMessage]) -> list[str]:
    """Start-line summary (method or status code) of messages, for assertions."""
    return [m.method or str(m.status) for m in msgs]

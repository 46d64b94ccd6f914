"""Shared bits of the SIPp-driven benchmarks (bench/cps.py, bench/memory.py, bench/mi.py).

They reuse the test harness (``tests/helpers``: free loopback ports, ``SipdlgProcess``,
``Sipp``); everything stays on 127.0.0.1 and every SIPp gets a ``-timeout``.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# ----------------------------------------------------------------------------- machine


def machine() -> dict[str, str]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        sipp = subprocess.run(["sipp", "-v"], capture_output=True, text=True, timeout=5)
        m = re.search(r"SIPp v[\w.\-]+", sipp.stdout + sipp.stderr)
        sipp_v = m.group(0) if m else "?"
    except (OSError, subprocess.TimeoutExpired):
        sipp_v = "?"
    return {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "sipp": sipp_v,
        "kernel": platform.release(),
    }


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def busy_cpus(interval: float = 2.0) -> float:
    """How many CPUs were busy over ``interval`` s (from /proc/stat): others' load right now,
    when called before a run (the 1-minute load average lags by a minute)."""

    def sample() -> tuple[int, int]:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = f[3] + f[4]
        return sum(f[:8]), idle

    t0, i0 = sample()
    time.sleep(interval)
    t1, i1 = sample()
    total = max(1, t1 - t0)
    return (1 - (i1 - i0) / total) * (os.cpu_count() or 1)


def print_header(what: str) -> None:
    m = machine()
    print(
        f"# {what}\n# {m['date']}  nproc {m['nproc']}  {m['cpu']}  Python {m['python']}  "
        f"{m['sipp']}  kernel {m['kernel']}\n# load average {loadavg()}, "
        f"busy CPUs now {busy_cpus():.2f}",
        flush=True,
    )


def wait_quiet(max_busy: float, max_wait: float) -> float:
    """Wait (up to ``max_wait`` s) until fewer than ``max_busy`` CPUs are busy; returns the
    last reading (reported with the step, so a noisy step can be recognized)."""
    deadline = time.monotonic() + max_wait
    while True:
        busy = busy_cpus(1.0)
        if busy < max_busy or time.monotonic() >= deadline:
            return busy


# ----------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime+stime of a process, or of one of its threads (``tid == pid``: the event loop)."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def child_pids(pid: int) -> list[int]:
    """The live children of a process (sipdlg's database writer process)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def over_tree(pid: int, measure: Callable[[int], float]) -> float:
    """``measure`` of a process plus that of its live children."""
    total = measure(pid)
    for child in child_pids(pid):
        try:
            total += measure(child)
        except OSError:
            continue  # exited meanwhile
    return total


def tree_cpu_seconds(pid: int) -> float:
    """utime+stime of a process and its live children (the database writer process)."""
    return over_tree(pid, cpu_seconds)


def rss_bytes(pid: int) -> int:
    """Resident set size (VmRSS) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# ----------------------------------------------------------------------------- MI client


class Mi:
    """A keep-alive JSON-RPC client for ``POST /mi`` (one HTTP connection)."""

    def __init__(self, host: str, port: int, timeout: float = 120.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)
        self.id = 0

    def raw(self, method: str, params: Any = None) -> bytes:
        self.id += 1
        req: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": self.id}
        if params is not None:
            req["params"] = params
        body = json.dumps(req).encode()
        for attempt in (0, 1):
            try:
                self.conn.request("POST", "/mi", body, {"Content-Type": "application/json"})
                resp = self.conn.getresponse()
                return resp.read()
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def call(self, method: str, params: Any = None) -> Any:
        reply = json.loads(self.raw(method, params))
        if "error" in reply:
            raise RuntimeError(f"MI {method}: {reply['error']}")
        return reply["result"]

    def stat(self, name: str) -> int:
        res = self.call("get_statistics", {"statistics": [name]})
        return int(next(iter(res.values())))

    def close(self) -> None:
        self.conn.close()


def wait_stat(mi: Mi, name: str, target: int, timeout: float, every: float = 0.5) -> int:
    """Poll ``get_statistics`` until ``name`` reaches ``target`` (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    value = -1
    while time.monotonic() < deadline:
        value = mi.stat(name)
        if value >= target:
            return value
        time.sleep(every)
    return value


# ----------------------------------------------------------------------------- numbers


def pct(values: list[float], q: float) -> float:
    """Percentile ``q`` (0-100), nearest rank; nan when empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ----------------------------------------------------------------------------- py-spy


def pyspy_summary(raw_file: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function from ``py-spy record -f raw`` output
    (collapsed stacks: ``frame;frame;...;leaf count``), plus a per-file self share."""
    self_n: dict[str, int] = defaultdict(int)
    line_n: dict[str, int] = defaultdict(int)
    incl_n: dict[str, int] = defaultdict(int)
    file_n: dict[str, int] = defaultdict(int)
    total = 0
    for line in raw_file.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame_name(f) for f in stack.split(";")]
        frames = [f for f in frames if f]
        if not frames:
            continue
        self_n[frames[-1]] += n
        line_n[_frame_name(stack.split(";")[-1], keep_line=True)] += n
        file_n[frames[-1].split(":", 1)[0].split(" ")[-1]] += n
        for f in set(frames):
            incl_n[f] += n
    if not total:
        return "(no samples)"
    out = [f"{total} samples", "", "self %  function (file)"]
    for name, n in sorted(self_n.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"{n / total * 100:5.1f}  {name}")
    out += ["", "incl %  function (file)"]
    for name, n in sorted(incl_n.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"{n / total * 100:5.1f}  {name}")
    out += ["", "self %  line"]
    for name, n in sorted(line_n.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"{n / total * 100:5.1f}  {name}  {_line_text(name)}")
    out += ["", "self %  file"]
    for name, n in sorted(file_n.items(), key=lambda kv: -kv[1])[:15]:
        out.append(f"{n / total * 100:5.1f}  {name}")
    return "\n".join(out)


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _frame_name(frame: str, keep_line: bool = False) -> str:
    """``func (path/to/file.py:123)`` → ``func (to/file.py)``; line dropped unless asked."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    short = path if not path.startswith("/") else "/".join(path.split("/")[-2:])
    if keep_line and m.group("line"):
        short += f":{m.group('line')}"
    return f"{m.group('func')} ({short})"


def _line_text(name: str) -> str:
    m = re.search(r"\(([^()]+):(\d+)\)$", name)
    if not m:
        return ""
    path = Path(m.group(1))
    for cand in (path, ROOT / path):
        try:
            return "| " + cand.read_text().splitlines()[int(m.group(2)) - 1].strip()[:80]
        except (OSError, IndexError):
            continue
    return ""


def start_uas(tmp: Path, seconds: float, tag: str) -> Any:
    """A SIPp ``uas`` on a free loopback port for a run of ``seconds``, started and bound."""
    from helpers import Sipp

    uas = Sipp(
        "uas", workdir=tmp, timeout=seconds * 3 + 60, timeout_error=False, trace_msg=False,
        name=f"uas-{tag}",
    )  # fmt: skip
    uas.start()
    uas.wait_listening()
    return uas

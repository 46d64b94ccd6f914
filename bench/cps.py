"""Highest call rate ``sipdlg serve`` sustains (issue 2, Performance).

SIPp ``-sn uac`` → sipdlg → SIPp ``-sn uas``, loopback UDP, ``-d 100`` (100 ms between ACK
and BYE; INVITE, 100, 180, 200, ACK, BYE, 200 per call: 7 messages in, 7 out at sipdlg).
A step offers ``rate`` calls/s for ``--seconds`` (20) with a fresh server and fresh SIPps; it
passes when

* failed calls < 0.1 % of the offered calls (calls not completed when SIPp stops count as
  failed),
* retransmissions < 1 % of the offered calls (SIPp counts retransmitted *messages*, uac and
  uas added: an upper bound of the calls that had one),
* achieved rate ≥ 95 % of the offered one (calls created / time, from the uac's
  ``-trace_stat`` rows while it was still creating calls).

Search: the ``--rates`` ladder upwards until a step fails (a failing step is re-run once:
the host is shared), then ``--refine`` bisection steps between the last pass and the first
fail. Bounded: at most ``--max-steps`` steps and ``--max-minutes`` per configuration.
sipdlg's CPU time per call (the process with its children, i.e. the database writer process,
and the event-loop thread alone; /proc/PID/stat) is reported at every step: it is much less
sensitive to noise than the pass/fail verdict.

    python bench/cps.py                               # --db none, then the default (SQLite)
    python bench/cps.py --db none --rates 500,1000,1500
    python bench/cps.py --db none --profile 1000      # one step at 1000 calls/s under py-spy
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    ROOT,
    busy_cpus,
    cpu_seconds,
    print_header,
    pyspy_summary,
    rss_bytes,
    tree_cpu_seconds,
    wait_quiet,
)
from helpers import SipdlgProcess, Sipp, SippError

PYSPY = ROOT / ".venv" / "bin" / "py-spy"


@dataclass
class Step:
    rate: int
    db: str
    offered: int
    created: int
    successful: int
    failed: int
    retrans: int
    achieved: float
    cpu_us: float
    loop_us: float
    rss_mb: float
    gc_max_ms: float
    slow_commits: int
    busy_before: float
    sipp_rc: int

    @property
    def fail_ratio(self) -> float:
        return max(self.failed, self.offered - self.successful) / max(1, self.offered)

    @property
    def retrans_ratio(self) -> float:
        return self.retrans / max(1, self.offered)

    @property
    def ok(self) -> bool:
        return (
            self.fail_ratio < 0.001
            and self.retrans_ratio < 0.01
            and self.achieved >= 0.95 * self.rate
        )

    def line(self) -> str:
        return (
            f"{self.rate:5d} cps --db {self.db:7s} achieved {self.achieved:7.1f} "
            f"({self.achieved / self.rate * 100:5.1f} %)  ok {self.successful}/{self.offered} "
            f"failed {self.fail_ratio * 100:5.2f} %  retrans {self.retrans} "
            f"({self.retrans_ratio * 100:5.2f} %)  CPU/call {self.cpu_us:5.0f} µs "
            f"(loop {self.loop_us:5.0f} µs)  RSS {self.rss_mb:5.1f} MB  "
            f"gc-max {self.gc_max_ms:4.0f} ms  "
            + (f"commits>100ms {self.slow_commits}  " if self.slow_commits >= 0 else "")
            + f"busy-before {self.busy_before:.2f}  sipp rc {self.sipp_rc}  "
            f"{'PASS' if self.ok else 'FAIL'}"
        )


def _elapsed(text: str) -> float:
    """SIPp's ``HH:MM:SS:uuuuuu`` (or ``...:SS.uuuuuu``) elapsed time in seconds."""
    parts = text.replace(".", ":").split(":")
    try:
        h, m, s = int(parts[0]), int(parts[1]), int(parts[2])
        frac = int(parts[3]) / 10 ** len(parts[3]) if len(parts) > 3 else 0.0
    except (ValueError, IndexError):
        return 0.0
    return h * 3600 + m * 60 + s + frac


def achieved_rate(stat_file: Path, offered: int) -> float:
    """Calls created per second while the uac was still creating them (-trace_stat rows)."""
    try:
        rows = list(
            csv.DictReader(stat_file.read_text(encoding="latin-1").splitlines(), delimiter=";")
        )
    except FileNotFoundError:
        return 0.0
    points = []
    for r in rows:
        try:
            points.append((_elapsed(r["ElapsedTime(C)"]), int(r["TotalCallCreated"])))
        except (KeyError, ValueError):
            continue
    points = [p for p in points if p[0] > 0]
    if not points:
        return 0.0
    done = next((i for i, (_, c) in enumerate(points) if c >= offered), None)
    if done is None:  # never created them all: average over the whole run
        t, c = points[-1]
        return c / t
    # Last row before completion, else interpolate on the completing row.
    if done > 0 and points[done - 1][0] >= 3:
        t, c = points[done - 1]
        return c / t
    t, c = points[done]
    return offered / t


def server_figures(url: str) -> tuple[float, int]:
    """From the server's ``/metrics``: its longest garbage-collector pause (-1 if unknown)
    and how many realtime commit groups held their messages over 100 ms (-1: no store)."""
    gc_max, slow_commits = -1.0, -1
    under, total = 0.0, 0.0
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith("sipdlg_gc_pause_max_seconds "):
                    gc_max = float(line.split()[1])
                elif line.startswith('sipdlg_db_commit_seconds_bucket{le="0.1"}'):
                    under = float(line.split()[1])
                elif line.startswith("sipdlg_db_commit_seconds_count "):
                    total = float(line.split()[1])
                    slow_commits = 0
    except OSError:
        pass
    if slow_commits == 0:
        slow_commits = int(total - under)
    return gc_max, slow_commits


def run_step(
    tmp: Path, rate: int, seconds: float, db: str, pause_ms: int, profile: Path | None = None
) -> Step:
    offered = int(rate * seconds)
    tag = f"{db}-{rate}-{int(time.time() * 1000) % 100000}"
    busy = busy_cpus(1.0)
    uas = Sipp(
        "uas", workdir=tmp, timeout=seconds * 2 + 40, timeout_error=False,
        trace_msg=False, name=f"uas-{tag}",
    )  # fmt: skip
    uas.start()
    uas.wait_listening()
    opts: dict[str, Any] = {"log_level": "warning"}
    if db == "none":
        opts["db"] = "none"
    server = SipdlgProcess(tmp, uas_port=uas.port, name=f"sipdlg-{tag}", **opts).start()
    spy = None
    try:
        assert server.proc is not None
        pid = server.proc.pid
        if profile is not None:
            spy = subprocess.Popen(
                [str(PYSPY), "record", "-f", "raw", "-o", str(profile), "-r", "200",
                 "-d", str(int(seconds)), "--nonblocking", "--pid", str(pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            )  # fmt: skip
            time.sleep(1.0)
        cpu0, loop0 = tree_cpu_seconds(pid), cpu_seconds(pid, pid)
        uac = Sipp(
            "uac", workdir=tmp, remote=server.sip_address, calls=offered, rate=rate,
            pause_ms=pause_ms, timeout=seconds * 1.5 + 15, timeout_error=False,
            trace_msg=False, name=f"uac-{tag}",
        )  # fmt: skip
        try:
            res = uac.run(timeout=seconds * 1.5 + 40)
        except SippError:  # overloaded SIPp past its -timeout: killed, counted as a failure
            res = uac.collect()
        cpu = tree_cpu_seconds(pid) - cpu0
        loop_cpu = cpu_seconds(pid, pid) - loop0
        rss = rss_bytes(pid)
        gc_max, slow_commits = server_figures(server.mi_url.replace("/mi", "/metrics"))
    finally:
        if spy is not None:
            try:
                spy.wait(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                spy.kill()
        server.stop()
        uas_res = uas.stop(grace=2)
    st = res.stats
    uas_st = uas_res.stats
    retrans = (st.retransmissions if st else 0) + (uas_st.retransmissions if uas_st else 0)
    return Step(
        rate=rate,
        db=db,
        offered=offered,
        created=st.total_created if st else 0,
        successful=st.successful if st else 0,
        failed=st.failed if st else offered,
        retrans=retrans,
        achieved=achieved_rate(uac.stat_file, offered),
        cpu_us=cpu / max(1, offered) * 1e6,
        loop_us=loop_cpu / max(1, offered) * 1e6,
        rss_mb=rss / 1e6,
        gc_max_ms=gc_max * 1000,
        slow_commits=slow_commits,
        busy_before=busy,
        sipp_rc=res.returncode,
    )


def search(
    tmp: Path, db: str, rates: list[int], args: argparse.Namespace
) -> tuple[int, list[Step]]:
    steps: list[Step] = []
    deadline = time.monotonic() + args.max_minutes * 60

    def attempt(rate: int) -> bool:
        for n in range(1 + args.retries):
            if len(steps) >= args.max_steps or time.monotonic() > deadline:
                print(f"# step budget exhausted (--max-steps/--max-minutes) at {rate}")
                return False
            wait_quiet(args.max_busy, args.quiet_wait)
            step = run_step(tmp, rate, args.seconds, db, args.pause_ms)
            steps.append(step)
            print(("  " if n else "") + step.line(), flush=True)
            if step.ok:
                return True
        return False

    best, first_fail = 0, None
    for rate in rates:
        if attempt(rate):
            best = rate
        else:
            first_fail = rate
            break
    if first_fail is not None:
        lo, hi = best, first_fail
        for _ in range(args.refine):
            if hi - lo <= args.resolution:
                break
            mid = (lo + hi) // 2 // 10 * 10
            if attempt(mid):
                lo = mid
            else:
                hi = mid
        best = lo
    print(
        f"max sustained, --db {db}: {best} calls/s "
        f"(first failing rate {first_fail if first_fail is not None else 'none reached'})"
    )
    return best, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--db",
        choices=["none", "default", "both"],
        default="both",
        help="--db none, the default SQLite realtime store, or both",
    )
    parser.add_argument("--rates", default="250,500,750,1000,1250,1500,2000,2500,3000,4000")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--pause-ms", type=int, default=100, help="SIPp -d")
    parser.add_argument("--refine", type=int, default=3, help="bisection steps after a fail")
    parser.add_argument("--resolution", type=int, default=50, help="stop refining below this")
    parser.add_argument("--retries", type=int, default=1, help="re-runs of a failing step")
    parser.add_argument("--max-steps", type=int, default=14, help="per configuration")
    parser.add_argument("--max-minutes", type=float, default=12, help="per configuration")
    parser.add_argument(
        "--max-busy",
        type=float,
        default=0.5,
        help="before a step, wait until fewer CPUs than this are busy",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=20, help="...but no longer than this many seconds"
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="RATE",
        help="instead of searching: one step at RATE under py-spy",
    )
    parser.add_argument("--profile-out", default="", help="where to keep the raw py-spy file")
    args = parser.parse_args()
    print_header("bench/cps.py: max sustained calls/s through sipdlg serve")
    with tempfile.TemporaryDirectory(prefix="sipdlg-cps-") as tmpdir:
        tmp = Path(tmpdir)
        if args.profile:
            db = "none" if args.db != "default" else "default"
            raw = Path(args.profile_out) if args.profile_out else tmp / "profile.txt"
            step = run_step(tmp, args.profile, args.seconds, db, args.pause_ms, profile=raw)
            print(step.line())
            print(pyspy_summary(raw))
            return
        rates = [int(r) for r in args.rates.split(",")]
        dbs = ["none", "default"] if args.db == "both" else [args.db]
        results = {db: search(tmp, db, rates, args) for db in dbs}
        print("\nsummary:")
        for db, (best, _) in results.items():
            print(f"  --db {db}: {best} calls/s")


if __name__ == "__main__":
    main()

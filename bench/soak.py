"""Soak: a steady call rate for a long time, RSS sampled all along (memory flat, no call lost).

SIPp ``-sn uac`` → ``sipdlg serve`` → SIPp ``-sn uas`` on loopback UDP at ``--rate`` calls/s
for ``--minutes``, then ``--settle`` seconds with no load.  Every ``--every`` seconds one row:
elapsed time, sipdlg's RSS (the process and its database writer, if any), dialogs in the table,
Python's allocated memory blocks, the longest event-loop lag and collector pause so far.

At the end: RSS at 5 minutes and at the end of the load, the slope over the load after the
first 5 minutes (KB per minute and bytes per call), RSS after the settle period, failed calls
and retransmissions (SIPp's, uac and uas), dialogs still in the table after the settle period,
and the longest loop lag and collector pause.  Pass, as issue 10 states it: RSS at the end
within 5 % of RSS at 5 minutes, no failed call, no dialog left, longest lag under 50 ms.

    PYTHONPATH=$PWD/build/native python bench/soak.py --rate 1000 --minutes 30
    python bench/soak.py --rate 500 --minutes 5 --db default
"""

from __future__ import annotations

import argparse
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from _common import Mi, over_tree, print_header, rss_bytes, tree_cpu_seconds
from helpers import SipdlgProcess, Sipp, SippError


def metrics(url: str) -> dict[str, float]:
    """The un-labelled samples of ``/metrics`` by name (what the soak rows show)."""
    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith("#") or "{" in line:
                    continue
                name, _, value = line.partition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    continue
    except OSError:
        pass
    return out


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y)."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=1000, help="calls per second")
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--settle", type=float, default=60, help="seconds without load after")
    parser.add_argument("--every", type=float, default=10, help="seconds between samples")
    parser.add_argument("--pause-ms", type=int, default=100, help="SIPp -d (call length)")
    parser.add_argument("--db", choices=["none", "default"], default="none")
    args = parser.parse_args()
    seconds = args.minutes * 60
    offered = int(args.rate * seconds)
    print_header(
        f"bench/soak.py: {args.rate} calls/s for {args.minutes:g} min, --db {args.db}, "
        f"-d {args.pause_ms} ms, then {args.settle:g} s idle"
    )
    with tempfile.TemporaryDirectory(prefix="sipdlg-soak-") as tmpdir:
        tmp = Path(tmpdir)
        limit = seconds + args.settle + 120
        uas = Sipp("uas", workdir=tmp, timeout=limit, timeout_error=False, trace_msg=False)
        uas.start()
        uas.wait_listening()
        opts: dict[str, Any] = {"log_level": "warning"}
        if args.db == "none":
            opts["db"] = "none"
        server = SipdlgProcess(tmp, uas_port=uas.port, **opts).start()
        assert server.proc is not None and server.mi_port is not None
        pid = server.proc.pid
        url = server.mi_url.replace("/mi", "/metrics")
        uac = Sipp(
            "uac", workdir=tmp, remote=server.sip_address, calls=offered, rate=args.rate,
            pause_ms=args.pause_ms, timeout=seconds + 120, timeout_error=False,
            trace_msg=False, name="uac",
        )  # fmt: skip
        rows: list[tuple[float, int, dict[str, float]]] = []
        print("   t s   RSS MB  dialogs  blocks/1000  lag-max ms  gc-max ms  CPU s", flush=True)

        def sample(t: float) -> None:
            m = metrics(url)
            rss = int(over_tree(pid, rss_bytes))
            rows.append((t, rss, m))
            print(
                f"{t:6.0f}  {rss / 1e6:7.1f}  {m.get('sipdlg_dialogs_in_memory', -1):7.0f}  "
                f"{m.get('sipdlg_memory_allocated_blocks', -1000) / 1000:11.0f}  "
                f"{m.get('sipdlg_event_loop_lag_max_seconds', -1) * 1000:10.1f}  "
                f"{m.get('sipdlg_gc_pause_max_seconds', -1) * 1000:9.1f}  "
                f"{tree_cpu_seconds(pid):6.0f}",
                flush=True,
            )

        try:
            t0 = time.monotonic()
            sample(0.0)
            uac.start()
            next_at = t0 + args.every
            while uac.running:
                time.sleep(max(0.0, min(1.0, next_at - time.monotonic())))
                if time.monotonic() >= next_at:
                    sample(time.monotonic() - t0)
                    next_at += args.every
            try:
                res = uac.wait(timeout=60)
            except SippError:
                res = uac.collect()
            load_end = time.monotonic() - t0
            sample(load_end)
            rss_load_end = rows[-1][1]
            settle_end = time.monotonic() + args.settle
            while time.monotonic() < settle_end:
                time.sleep(min(args.every, max(0.0, settle_end - time.monotonic())))
                sample(time.monotonic() - t0)
            mi = Mi("127.0.0.1", server.mi_port)
            left = mi.stat("active_dialogs") + mi.stat("early_dialogs")
            in_table = len(mi.call("dlg_list")["Dialogs"])
            mi.close()
        finally:
            server.stop()
            uas_res = uas.stop(grace=2)
    st = res.stats
    retrans = (st.retransmissions if st else 0) + (
        uas_res.stats.retransmissions if uas_res.stats else 0
    )
    at5 = next((r for r in rows if r[0] >= 300), rows[min(len(rows) - 1, 1)])
    steady = [(t / 60, rss / 1e3) for t, rss, _ in rows if 300 <= t <= load_end]
    kb_per_min = slope(steady)
    last = rows[-1][2]
    print(
        f"\ncalls: offered {offered}, successful {st.successful if st else 0}, "
        f"failed {st.failed if st else offered}, retransmissions {retrans}"
    )
    print(
        f"RSS: start {rows[0][1] / 1e6:.1f} MB, at 5 min {at5[1] / 1e6:.1f} MB, "
        f"end of load {rss_load_end / 1e6:.1f} MB "
        f"({(rss_load_end / at5[1] - 1) * 100:+.1f} % on 5 min), "
        f"{args.settle:g} s after {rows[-1][1] / 1e6:.1f} MB"
    )
    print(
        f"slope after 5 min: {kb_per_min:+.0f} KB/min "
        f"= {kb_per_min * 1e3 / 60 / args.rate:+.1f} B per call"
    )
    print(f"dialogs left after {args.settle:g} s idle: {left} active/early, {in_table} in dlg_list")
    print(
        f"longest loop lag {last.get('sipdlg_event_loop_lag_max_seconds', -1) * 1000:.1f} ms, "
        f"longest gc pause {last.get('sipdlg_gc_pause_max_seconds', -1) * 1000:.1f} ms, "
        f"gc rescans {last.get('sipdlg_gc_rescans_total', 0):.0f}"
    )


if __name__ == "__main__":
    main()

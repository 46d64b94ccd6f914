"""Memory per active dialog (issue 2, Performance: target ≤ 2 KiB per dialog).

Two measurements:

``sipp``    the real ``sipdlg serve`` with 10,000 calls held up by SIPp (built-in ``uac`` with a
            long ``-d`` and ``-l``, built-in ``uas``): RSS of the sipdlg process before (after
            a warm-up of short calls) and once all are established, and again once their
            INVITE transactions are gone (64*T1 = 32 s later); the difference over the count.
``engine``  the sans-I/O core in-process: 10,000 dialogs built through ``Engine.receive``
            (INVITE, 100, 180, 200 with SDP, ACK, SIPp's messages), timers run past the
            transactions' end; ``tracemalloc`` says how many bytes are held per dialog and
            by which source lines, and a walk of one dialog object splits it by field.

    python bench/memory.py sipp --calls 10000          # --db none (default here) or --db default
    python bench/memory.py engine --calls 10000
    python bench/memory.py all
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from _common import Mi, print_header, rss_bytes, wait_stat
from engine_calls import PROXY, UAS, call_up, hang_up
from helpers import SipdlgProcess, Sipp

from engine.dispatcher import Destination  # noqa: E402
from engine.proxy import Engine, EngineConfig

KIB = 1024


# ------------------------------------------------------------------------------ sipp


def warm_up(tmp: Path, server: SipdlgProcess, calls: int, rate: int) -> None:
    """Short calls first, so code paths, caches and tables exist before the "before" figure."""
    Sipp(
        "uac",
        workdir=tmp,
        remote=server.sip_address,
        calls=calls,
        rate=rate,
        pause_ms=0,
        timeout=60,
        trace_msg=False,
        name="warmup",
    ).run()


def bench_sipp(calls: int, rate: int, db: str, settle: float) -> None:
    print(f"## sipp: {calls} held calls through sipdlg serve (--db {db}), SIPp uac/uas built-in")
    with tempfile.TemporaryDirectory(prefix="sipdlg-mem-") as tmpdir:
        tmp = Path(tmpdir)
        hold = 3_600_000  # ms: far longer than the measurement
        uas = Sipp("uas", workdir=tmp, timeout=900, timeout_error=False, trace_msg=False)
        uas.start()
        uas.wait_listening()
        opts: dict[str, Any] = {"log_level": "warning"}
        if db == "none":
            opts["db"] = "none"
        server = SipdlgProcess(tmp, uas_port=uas.port, **opts).start()
        uac = None
        extra: list[Sipp] = []
        try:
            assert server.proc is not None and server.mi_port is not None
            pid = server.proc.pid
            mi = Mi("127.0.0.1", server.mi_port)
            # Warm-up: short calls so code paths, caches and the tables exist before "before".
            warm_up(tmp, server, calls=500, rate=250)
            time.sleep(3)
            gc_note = mi.stat("active_dialogs")
            rss0 = rss_bytes(pid)
            print(f"before: RSS {rss0 / 1e6:.2f} MB, active dialogs {gc_note}")
            uac = Sipp(
                "uac", workdir=tmp, remote=server.sip_address, calls=calls, rate=rate,
                limit=calls, pause_ms=hold, timeout=900, timeout_error=False,
                trace_msg=False, name="hold",
            )  # fmt: skip
            t0 = time.monotonic()
            uac.start()
            active = wait_stat(mi, "active_dialogs", calls, timeout=calls / rate * 3 + 60)
            setup = time.monotonic() - t0
            time.sleep(1)
            rss1 = rss_bytes(pid)
            print(
                f"{active} active dialogs after {setup:.1f} s: RSS {rss1 / 1e6:.2f} MB, "
                f"+{(rss1 - rss0) / 1e6:.2f} MB = {(rss1 - rss0) / max(1, active):.0f} B/dialog "
                "(INVITE transactions still in Timer K/L)"
            )
            if settle > 0:
                time.sleep(settle)
                rss2 = rss_bytes(pid)
                active = mi.stat("active_dialogs")
                print(
                    f"{active} active dialogs {settle:.0f} s later: "
                    f"RSS {rss2 / 1e6:.2f} MB, +{(rss2 - rss0) / 1e6:.2f} MB = "
                    f"{(rss2 - rss0) / max(1, active):.0f} B/dialog (the freed transaction "
                    "memory stays in the process: RSS does not shrink)"
                )
                # A second batch reuses the memory the first batch's transactions freed: its
                # RSS growth is close to the cost of the dialogs alone.
                uac2 = Sipp(
                    "uac", workdir=tmp, remote=server.sip_address, calls=calls, rate=rate,
                    limit=calls, pause_ms=hold, timeout=900, timeout_error=False,
                    trace_msg=False, name="hold2",
                )  # fmt: skip
                extra.append(uac2)
                uac2.start()
                active = wait_stat(mi, "active_dialogs", 2 * calls, timeout=calls / rate * 3 + 60)
                time.sleep(settle)
                rss3 = rss_bytes(pid)
                print(
                    f"second batch: {active} active dialogs, {settle:.0f} s after: RSS "
                    f"{rss3 / 1e6:.2f} MB, +{(rss3 - rss2) / 1e6:.2f} MB for "
                    f"{active - calls} more = {(rss3 - rss2) / max(1, active - calls):.0f} "
                    "B/dialog"
                )
            mi.close()
        finally:
            for u in [uac, *extra]:
                if u is not None and u.running:
                    u._kill()
            server.stop()
            uas._kill() if uas.running else None


# ------------------------------------------------------------------------------ server trace

_TRACED = """
import gc, signal, sys, tracemalloc
tracemalloc.start(1)
out = sys.argv.pop(1)
count = [0]
def dump(sig, frame):
    gc.collect()
    count[0] += 1
    tracemalloc.take_snapshot().dump(f"{out}/snap{count[0]}.bin")
    open(f"{out}/snap{count[0]}.done", "w").close()
signal.signal(signal.SIGUSR2, dump)
sys.argv[0] = "sipdlg"
from app.cli import main
sys.exit(main())
"""


class TracedSipdlg(SipdlgProcess):
    """``sipdlg serve`` under tracemalloc; SIGUSR2 writes a snapshot to ``snap_dir``."""

    snap_dir = "."

    @property
    def command(self) -> list[str]:
        cmd = super().command
        return [cmd[0], "-c", _TRACED, self.snap_dir, *cmd[3:]]


def bench_server_trace(calls: int, rate: int, settle: float, top: int) -> None:
    """The real server under tracemalloc: what it holds per held call, by source line."""
    import os
    import signal

    print(f"## server-trace: {calls} held calls, sipdlg serve --db none under tracemalloc")
    with tempfile.TemporaryDirectory(prefix="sipdlg-memtr-") as tmpdir:
        tmp = Path(tmpdir)
        uas = Sipp("uas", workdir=tmp, timeout=900, timeout_error=False, trace_msg=False)
        uas.start()
        uas.wait_listening()
        TracedSipdlg.snap_dir = str(tmp)
        server = TracedSipdlg(tmp, uas_port=uas.port, log_level="warning", db="none").start()
        uac = None
        try:
            assert server.proc is not None and server.mi_port is not None
            pid = server.proc.pid
            mi = Mi("127.0.0.1", server.mi_port)

            def snapshot(n: int) -> tracemalloc.Snapshot:
                os.kill(pid, signal.SIGUSR2)
                done = tmp / f"snap{n}.done"
                deadline = time.monotonic() + 120
                while not done.exists() and time.monotonic() < deadline:
                    time.sleep(0.2)
                return tracemalloc.Snapshot.load(str(tmp / f"snap{n}.bin"))

            warm_up(tmp, server, calls=300, rate=150)
            time.sleep(35)  # the warm-up's transactions end
            base = snapshot(1)
            uac = Sipp(
                "uac",
                workdir=tmp,
                remote=server.sip_address,
                calls=calls,
                rate=rate,
                limit=calls,
                pause_ms=3_600_000,
                timeout=900,
                timeout_error=False,
                trace_msg=False,
                name="hold",
            )
            uac.start()
            active = wait_stat(mi, "active_dialogs", calls, timeout=calls / rate * 3 + 60)
            time.sleep(settle)
            after = snapshot(2)
            diff = after.compare_to(base, "lineno")
            total = sum(d.size_diff for d in diff)
            print(
                f"{active} dialogs, {settle:.0f} s after set-up: traced memory "
                f"+{total / 1e6:.1f} MB = {total / max(1, active):.0f} B/dialog"
            )
            _print_lines(diff, max(1, active), top)
            mi.close()
        finally:
            if uac is not None and uac.running:
                uac._kill()
            server.stop()
            if uas.running:
                uas._kill()


# ------------------------------------------------------------------------------ engine


def held_calls(eng: Engine, first: int, count: int, now: float) -> None:
    """``count`` calls up to the ACK (state 4), SIPp's message flow."""
    for n in range(first, first + count):
        call_up(eng, n, now)


def deep_size(obj: object, seen: set[int]) -> int:
    """Bytes of ``obj`` and everything it references that was not seen before."""
    if id(obj) in seen or obj is None or isinstance(obj, bool | int) and -5 <= obj <= 256:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, str | bytes | int | float):
        return size
    if isinstance(obj, dict):
        return size + sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    if isinstance(obj, list | tuple | set | frozenset):
        return size + sum(deep_size(v, seen) for v in obj)
    slots = getattr(type(obj), "__slots__", ())
    for name in slots:
        size += deep_size(getattr(obj, name, None), seen)
    if hasattr(obj, "__dict__"):
        size += deep_size(vars(obj), seen)
    return size


def field_breakdown(dlg: object, shared: set[int]) -> list[tuple[str, int]]:
    """Deep size of each field of one dialog (objects in ``shared`` counted zero)."""
    out = []
    seen = set(shared)
    seen.add(id(dlg))
    out.append(("Dialog object itself (slots)", sys.getsizeof(dlg)))
    for name in type(dlg).__slots__:  # type: ignore[attr-defined]
        out.append((name, deep_size(getattr(dlg, name), seen)))
    return out


def _build(calls: int, lean_cancel: bool) -> dict:
    """10,000 held dialogs through a fresh engine; bytes per dialog at three moments."""
    from engine import timers as timers_mod

    original = timers_mod.Timer.cancel
    if lean_cancel:  # what-if, bench-only: a cancelled timer drops what it would have called

        def cancel(self: timers_mod.Timer) -> None:
            original(self)
            self.callback = _noop
            self.args = ()

        timers_mod.Timer.cancel = cancel  # type: ignore[method-assign]
    try:
        config = EngineConfig(next_hops=[Destination(None, *UAS)])
        eng = Engine([PROXY], config, rng=random.Random(1))
        now = 0.0
        tracemalloc.start(1)
        held_calls(eng, 0, 20, now)  # warm-up: caches, interned names (few: the timer heap's
        for n in range(20):  # ... cancelled-entry count must not be skewed) and end them
            hang_up(eng, n, now)
        now += 400
        eng.handle_timers(now)
        eng.next_deadline()
        gc.collect()
        base = tracemalloc.take_snapshot()
        base_bytes = tracemalloc.get_traced_memory()[0]
        held_calls(eng, 1000, calls, now)
        gc.collect()
        out: dict = {"eng": eng, "cancelled": eng.timers._cancelled}
        out["acked"] = (tracemalloc.get_traced_memory()[0] - base_bytes) / calls
        out["txns_acked"] = len(eng.server_txns) + len(eng.client_txns)
        eng.handle_timers(now + 40)  # past Timer K/L/M/D: transactions gone
        eng.next_deadline()
        gc.collect()
        out["txn_end"] = (tracemalloc.get_traced_memory()[0] - base_bytes) / calls
        out["txns_end"] = len(eng.server_txns) + len(eng.client_txns)
        out["heap_end"] = len(eng.timers)
        out["snap_txn_end"] = tracemalloc.take_snapshot().compare_to(base, "lineno")
        eng.handle_timers(now + 200)  # past Timer C (180 s): cancelled entries popped
        eng.next_deadline()
        gc.collect()
        out["steady"] = (tracemalloc.get_traced_memory()[0] - base_bytes) / calls
        out["heap_steady"] = len(eng.timers)
        out["snap_steady"] = tracemalloc.take_snapshot().compare_to(base, "lineno")
        tracemalloc.stop()
        assert eng.stats.active_dialogs == calls, eng.stats.active_dialogs
        return out
    finally:
        timers_mod.Timer.cancel = original  # type: ignore[method-assign]


def _noop(*_: object) -> None:
    pass


def _print_lines(stats: list, calls: int, top: int) -> None:
    for st in stats[:top]:
        frame = st.traceback[0]
        fname = "/".join(Path(frame.filename).parts[-2:])
        line = _source(frame.filename, frame.lineno)
        print(
            f"{st.size_diff / calls:7.0f}  {st.count_diff / calls:5.1f} blocks  "
            f"{fname}:{frame.lineno}  {line}"
        )


def bench_engine(calls: int, top: int) -> None:
    print(f"## engine: {calls} dialogs built through Engine.receive, tracemalloc")
    r = _build(calls, lean_cancel=False)
    print(
        f"right after the ACKs ({r['txns_acked']} transactions alive):  {r['acked']:6.0f} B/dialog"
    )
    print(
        f"+40 s, transactions ended ({r['txns_end']} alive, timer heap {r['heap_end']}, "
        f"{r['cancelled']} cancelled entries waiting for their deadline): "
        f"{r['txn_end']:6.0f} B/dialog = {r['txn_end'] / KIB:.2f} KiB"
    )
    print(
        f"+200 s, past Timer C (timer heap {r['heap_steady']}):             "
        f"{r['steady']:6.0f} B/dialog = {r['steady'] / KIB:.2f} KiB   (target <= 2 KiB)"
    )
    print(f"\nby source line at +40 s (B/dialog, top {top}):")
    _print_lines(r["snap_txn_end"], calls, top)
    print(f"\nby source line at +200 s, steady state (B/dialog, top {top}):")
    _print_lines(r["snap_steady"], calls, top)

    # One dialog, field by field (shared objects: engine, timer queue, sockets).
    eng = r["eng"]
    dlg = list(eng.dialogs)[-1]
    shared = {id(s) for s in eng.sockets} | {id(eng), id(eng.timers)}
    parts = field_breakdown(dlg, shared)
    total = sum(n for _, n in parts)
    print(f"\none dialog, deep size by field ({total} B; its table entries not included):")
    for name, n in sorted(parts, key=lambda kv: -kv[1]):
        if n:
            print(f"{n:6d}  {name}")
    leg = dlg.callees[0] if dlg.callees else None
    if leg is not None:
        print("first callee leg, by field:")
        for name, n in sorted(field_breakdown(leg, shared), key=lambda kv: -kv[1]):
            if n:
                print(f"{n:6d}    {name}")
    del r, eng, dlg, leg
    gc.collect()

    print(
        "\ncancelled timers: Timer.cancel() only flags the entry; the heap is compacted when"
        "\nover half of it is cancelled, else an entry (with the transaction its callback is"
        "\nbound to) lives until its deadline; Timer C (180 s) is cancelled by every 200 OK."
        "\nA fresh engine, no warm-up, as is and with a bench-only patch of cancel():"
    )
    for lean in (False, True):
        for line in cancel_retention(calls, lean):
            print("  " + line)


def cancel_retention(calls: int, lean: bool) -> list[str]:
    from engine import timers as timers_mod

    original = timers_mod.Timer.cancel
    if lean:

        def cancel(self: timers_mod.Timer) -> None:
            original(self)
            self.callback = _noop
            self.args = ()

        timers_mod.Timer.cancel = cancel  # type: ignore[method-assign]
    lines = []
    try:
        gc.collect()
        config = EngineConfig(next_hops=[Destination(None, *UAS)])
        eng = Engine([PROXY], config, rng=random.Random(2))
        tracemalloc.start(1)
        base = tracemalloc.get_traced_memory()[0]
        held_calls(eng, 0, calls, 0.0)
        for t in (40, 200):
            eng.handle_timers(float(t))
            gc.collect()
            q = eng.timers
            label = "cancel() drops callback+args" if lean else "as is"
            lines.append(
                f"{label:30s} +{t:3d} s: timer heap {len(q)}, {q._cancelled} cancelled: "
                f"{(tracemalloc.get_traced_memory()[0] - base) / calls:6.0f} B/dialog"
            )
        tracemalloc.stop()
    finally:
        timers_mod.Timer.cancel = original  # type: ignore[method-assign]
    return lines


def _source(filename: str, lineno: int) -> str:
    try:
        return Path(filename).read_text().splitlines()[lineno - 1].strip()[:90]
    except (OSError, IndexError):
        return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["sipp", "engine", "server-trace", "all"])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=400, help="sipp: call set-up rate")
    parser.add_argument("--db", choices=["none", "default"], default="none")
    parser.add_argument("--settle", type=float, default=35, help="sipp: wait for Timer K/L")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    print_header("bench/memory.py: memory per active dialog")
    if args.what in ("engine", "all"):
        bench_engine(args.calls, args.top)
    if args.what == "server-trace":
        bench_server_trace(args.calls, args.rate, args.settle, args.top)
    if args.what in ("sipp", "all"):
        bench_sipp(args.calls, args.rate, args.db, args.settle)


if __name__ == "__main__":
    main()

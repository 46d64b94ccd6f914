"""What dialog persistence costs (issue 5): throughput with ``--db none`` vs realtime SQLite,
and the time to restore 100,000 dialogs at start.  A script, not a test:

    python bench/persistence.py engine            # in-process: engine + store, no sockets
    python bench/persistence.py sipp              # sipdlg serve + SIPp, max sustained calls/s
    python bench/persistence.py restore           # 100,000 synthesized dialogs
    python bench/persistence.py all

``engine`` feeds whole calls (INVITE, 100, 180, 200, ACK, BYE, 200) into one Engine with a
Persistence writing to a SQLite file, the way ``SipService.flush`` does: one group commit per
``batch`` messages (batch 1 = a commit for every message that changed a dialog, the worst case;
the server coalesces per event-loop iteration, so under load a batch holds many datagrams).

``sipp`` runs ``sipdlg serve`` between a SIPp uac and uas (built-in scenarios) at rising rates,
``--db none`` and realtime SQLite alternately at each rate, and reports the highest rate each
sustained with no failed call, plus sipdlg's CPU time per call at every rate.

``restore`` writes 100,000 confirmed dialogs with the store itself, then times opening the file
(checks included) and restoring them into an engine, and a real ``sipdlg serve`` start on it.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]

from _common import cpu_seconds  # noqa: E402
from engine_calls import PROXY, UAC, UAS, in_dialog, invite, reply_to  # noqa: E402

from app.store.persistence import Persistence  # noqa: E402
from app.store.sqlite import SqliteStore  # noqa: E402
from engine.dialog import CalleeLeg, Dialog, DlgState, Socket  # noqa: E402
from engine.dispatcher import Destination  # noqa: E402
from engine.dlg_db import dialog_row, restore_dialogs  # noqa: E402
from engine.dlg_records import RecordRing, make_record  # noqa: E402
from engine.dlg_table import callid_hash  # noqa: E402
from engine.events import DialogChanged, DialogEnded  # noqa: E402
from engine.proxy import Engine, EngineConfig  # noqa: E402

# --------------------------------------------------------------------------------- engine


def engine_run(calls: int, db: str | None, batch: int, sync: str = "normal") -> float:
    """calls/s through one engine; ``db`` a file (realtime persistence) or None."""
    config = EngineConfig(next_hops=[Destination(None, *UAS)], report_changes=db is not None)
    eng = Engine([PROXY], config, rng=random.Random(1))
    ring = RecordRing(10000)  # ended-call records written too, as in the server
    persist = None
    if db is not None:
        persist = Persistence(eng, SqliteStore(db, 4096, sync), mode="realtime")
        persist.attach_records(ring)
    pending = 0
    now = 0.0

    def feed(data: bytes, src: tuple[str, int]) -> None:
        nonlocal pending
        eng.receive(data, PROXY, src, None, now)
        for event in eng.take_events():  # as SipService.dispatch_events does
            if isinstance(event, DialogChanged) and persist is not None:
                persist.note_change(event.dialog, event.state_only)
            elif isinstance(event, DialogEnded):
                ring.add(make_record(eng, event.dialog))
        pending += 1
        if pending >= batch:  # SipService.flush: commit, then write the outbox
            pending = 0
            if persist is not None and persist.dirty:
                persist.write_dirty()

    start = time.perf_counter()
    # Calls overlap in groups of ``group``: every INVITE of the group, then every 100, 180,
    # 200, ACK, BYE and 200, so each dialog is written at 200, at ACK and at its end (as
    # under real load) instead of starting and ending within one batch.
    group = 100
    for first in range(0, calls, group):
        numbers = range(first, min(calls, first + group))
        fwd = {}
        for n in numbers:
            feed(invite(n), UAC)
            fwd[n] = eng.take_sends()[-1].data
        for status, sdp in (("100 Trying", False), ("180 Ringing", True), ("200 OK", True)):
            for n in numbers:
                tag = f"{n}SIPpTag01" if status[0] != "1" or status[1] != "0" else None
                feed(reply_to(fwd[n], status, tag, sdp=sdp and status[0] == "2"), UAS)
        for n in numbers:
            feed(in_dialog("ACK", n, 1, f"{n}SIPpTag01"), UAC)
        byes = {}
        for n in numbers:
            feed(in_dialog("BYE", n, 2, f"{n}SIPpTag01"), UAC)
            byes[n] = eng.take_sends()[-1].data
        for n in numbers:
            feed(reply_to(byes[n], "200 OK", None), UAS)
        eng.take_sends()
        now += 0.05
        eng.handle_timers(now)
    if persist is not None:
        persist.write_dirty()
    elapsed = time.perf_counter() - start
    assert len(eng.dialogs) == 0 and eng.stats.processed_dialogs == calls
    if persist is not None:
        assert persist.store.count() == 0  # type: ignore[attr-defined]
        assert persist.store.count("ended_dialogs") == calls  # type: ignore[attr-defined]
        persist.close()
    return calls / elapsed


def bench_engine(calls: int, repeat: int = 3) -> None:
    """Each configuration ``repeat`` times, interleaved; the best run counts (shared CPU)."""
    print(f"## engine: {calls} calls per run, in-process (no sockets), best of {repeat}, calls/s")
    configs = [("none", 1)] + [(sync, b) for sync in ("normal", "full") for b in (1, 8, 64)]
    best: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeat):
            for sync, batch in configs:
                db = None if sync == "none" else os.path.join(tmp, f"{sync}-{batch}-{r}.db")
                rate = engine_run(calls, db, batch, "normal" if db is None else sync)
                best[(sync, batch)] = max(best.get((sync, batch), 0.0), rate)
    base = best[("none", 1)]
    print(f"--db none                                        {base:8.0f}")
    for sync, batch in configs[1:]:
        rate = best[(sync, batch)]
        print(
            f"realtime, --db-sync {sync:6s}, commit every {batch:2d} msgs "
            f"{rate:8.0f}  ({(1 - rate / base) * 100:4.1f} % below none)"
        )


# --------------------------------------------------------------------------------- sipp


def sipp_step(
    tmp: Path, rate: int, seconds: float, db: str
) -> tuple[bool, tuple[float, float], str]:
    """One run at ``rate`` calls/s: (every call succeeded, sipdlg CPU µs per call (process,
    event-loop thread), summary)."""
    from helpers import SipdlgProcess, Sipp

    calls = int(rate * seconds)
    tag = f"{db.split(':')[0]}-{rate}"
    uas = Sipp("uas", workdir=tmp, timeout=seconds + 60, timeout_error=False, trace_msg=False)
    uas.start()
    uas.wait_listening()
    server = SipdlgProcess(
        tmp, uas_port=uas.port, db=db, log_level="warning", name=f"sipdlg-{tag}"
    ).start()
    assert server.proc is not None
    pid = server.proc.pid
    cpu0, loop0 = cpu_seconds(pid), cpu_seconds(pid, pid)
    uac = Sipp(
        "uac",
        workdir=tmp,
        remote=server.sip_address,
        calls=calls,
        rate=rate,
        timeout=seconds + 30,
        trace_msg=False,
        name=f"uac-{tag}",
    )
    res = uac.run(timeout=seconds + 40)
    cpu = cpu_seconds(pid) - cpu0
    loop_cpu = cpu_seconds(pid, pid) - loop0
    server.stop()
    uas.stop()
    st = res.stats
    # SIPp's exit code is 0 only when every call succeeded (its stat file may lag a second).
    retrans = st.retransmissions if st else -1
    summary = f"sipp exit {res.returncode}, retransmissions {retrans}"
    per_call = (cpu / max(1, calls) * 1e6, loop_cpu / max(1, calls) * 1e6)
    return res.returncode == 0 and 0 <= retrans <= calls // 100, per_call, summary


def bench_sipp(rates: list[int], seconds: float) -> None:
    print(f"## sipp: sipdlg serve between SIPp uac and uas, {seconds:.0f} s per step")
    best = {"none": 0, "realtime": 0}
    with tempfile.TemporaryDirectory() as tmp:
        for rate in rates:
            for label in ("none", "realtime"):
                if best[label] < 0:
                    continue
                db = "none" if label == "none" else f"sqlite:///{tmp}/bench-{rate}.db"
                ok, (us, loop_us), summary = sipp_step(Path(tmp), rate, seconds, db)
                print(
                    f"{rate:5d} calls/s  --db {label:8s}  CPU/call {us:5.0f} µs "
                    f"(event loop {loop_us:5.0f} µs)  {'ok  ' if ok else 'FAIL'} {summary}"
                )
                if ok:
                    best[label] = rate
                else:
                    best[label] = -best[label] or -1  # stop climbing this one
            if all(v < 0 for v in best.values()):
                break
    for label, rate in best.items():
        print(f"max sustained, --db {label}: {abs(rate) if rate != -1 else 0} calls/s")


# --------------------------------------------------------------------------------- restore


def synth(n: int, sock: Socket, now: float) -> Dialog:
    callid = f"{n:08x}-bench@10.0.0.1"
    return Dialog(
        h_entry=callid_hash(callid, 4096),
        h_id=n + 1,
        callid=callid,
        from_uri=f"sip:{n}@a.example",
        to_uri=f"sip:{n}@b.example",
        caller_tag=f"f{n}",
        caller_contact=f"sip:caller@10.0.{n % 250}.1:5060",
        caller_socket=sock,
        invite_cseq=1,
        caller_route_set=("<sip:10.1.0.1;lr>",),
        caller_sdp="v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
        "m=audio 4000 RTP/AVP 0\r\n",
        caller_source=("udp", "10.0.0.1", 5060),
        callees=[
            CalleeLeg(
                tag=f"t{n}",
                contact=f"sip:callee@10.2.{n % 250}.1:5060",
                caller_cseq=1,
                route_set=("<sip:10.3.0.1;lr>",),
                socket=sock,
                sdp="v=0\r\no=- 2 2 IN IP4 10.2.0.1\r\ns=-\r\nc=IN IP4 10.2.0.1\r\nt=0 0\r\n"
                "m=audio 5000 RTP/AVP 0\r\n",
            )
        ],
        confirmed_leg=0,
        state=DlgState.CONFIRMED,
        timestart=int(now) - 60,
        timeout=int(now) + 43200,
        lifetime=43200,
        created=now - 61,
    )


def bench_restore(count: int) -> None:
    print(f"## restore: {count} confirmed dialogs")
    sock = Socket("udp", "127.0.0.1", 5060)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "restore.db")
        store = SqliteStore(path, 4096)
        now = time.time()
        t0 = time.perf_counter()
        rows = [dialog_row(synth(n, sock, now), 0.0, now) for n in range(count)]
        store.write(rows, ())
        store.close()
        written = time.perf_counter() - t0
        size = os.path.getsize(path) / 1e6
        print(f"written with the store in {written:.2f} s, file {size:.1f} MB")

        import gc

        gc.disable()  # as Persistence.restore does
        t0 = time.perf_counter()
        store = SqliteStore(path, 4096)
        opened = time.perf_counter() - t0
        loaded_rows = store.load()
        loaded = time.perf_counter() - t0 - opened
        eng = Engine([sock], EngineConfig())
        eng.wall_offset = time.time()
        restored, _ = restore_dialogs(eng, loaded_rows, eng.now)
        total = time.perf_counter() - t0
        gc.enable()
        store.close()
        assert len(restored) == count and eng.stats.active_dialogs == count
        print(
            f"in-process: open+checks {opened:.2f} s, read {loaded:.2f} s, "
            f"rebuild {total - opened - loaded:.2f} s, total {total:.2f} s"
        )

        # A real server start on that file: process start to "restored N dialogs" logged.
        from helpers import free_port

        port = free_port("both")
        cmd = [
            sys.executable, "-m", "app.cli", "serve",
            "--listen", f"udp:127.0.0.1:{port}", "--listen", f"tcp:127.0.0.1:{port}",
            "--mi-listen", f"127.0.0.1:{free_port('tcp')}", "--next-hop", "127.0.0.1:9",
            "--db", f"sqlite:///{path}",
        ]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        line = ""
        for line in proc.stdout:
            if "restored" in line or "started" in line:
                break
        up = time.perf_counter() - t0
        proc.terminate()
        proc.wait(timeout=60)
        m = re.search(r"restored (\d+) dialogs .* in ([0-9.]+) s", line)
        detail = f"restore itself {m.group(2)} s" if m else line.strip()
        print(f"sipdlg serve: restored log line {up:.2f} s after exec ({detail})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["engine", "sipp", "restore", "all"])
    parser.add_argument("--calls", type=int, default=20000, help="engine: calls per run")
    parser.add_argument("--rates", default="200,400,600,800,1000,1200", help="sipp: calls/s steps")
    parser.add_argument("--seconds", type=float, default=10, help="sipp: length of a step")
    parser.add_argument("--dialogs", type=int, default=100_000, help="restore: how many")
    args = parser.parse_args()
    if args.what in ("engine", "all"):
        bench_engine(args.calls)
    if args.what in ("restore", "all"):
        bench_restore(args.dialogs)
    if args.what in ("sipp", "all"):
        bench_sipp([int(r) for r in args.rates.split(",")], args.seconds)


if __name__ == "__main__":
    main()

"""MI performance (issue 3): ``dlg_list`` of 10,000 and 50,000 dialogs, SIP latency while it
runs, and the time from ``dlg_end_dlg`` to both BYEs on the wire.

``list``  calls held up by SIPp (``tests/scenarios/uac_wait_bye.xml`` → sipdlg →
          ``uas_answer.xml``, loopback UDP) until ``--counts`` dialogs are established (the
          next count is reached by a further SIPp uac on the same server); at each count,
          ``dlg_list`` (all) is timed ``--repeat`` times over one keep-alive HTTP connection
          (request sent → whole body read), and a separate probe process sends SIP OPTIONS
          with ``Max-Forwards: 0`` (answered 483 by sipdlg itself: a full parse, validation
          and reply on the event loop) every ``1/--probe-rate`` s and times each answer; the
          probes are split into those sent while a listing ran and the idle ones.
``bye``   ``--calls`` held calls (same scenarios), then each is ended by ID with
          ``dlg_end_dlg``, one at a time; ``dumpcap`` on ``lo`` (port filter) timestamps the
          BYEs sipdlg sends to the caller and to the callee; the delay from the MI request
          (taken just before the HTTP request is written, same clock) to each BYE, and to the
          later of the two, p50/p99/max.

    python bench/mi.py list --counts 10000,50000
    python bench/mi.py bye --calls 1000
    python bench/mi.py all
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import select
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import Mi, median, pct, print_header, rss_bytes, wait_stat
from helpers import SipdlgProcess, Sipp, free_port

# ------------------------------------------------------------------------------ set-up


class Held:
    """A sipdlg server with a SIPp UAS that answers and waits for the BYE; ``add(n)`` places
    ``n`` more calls that stay up (until sipdlg's BYE, or SIPp's -timeout)."""

    def __init__(self, tmp: Path, db: str, rate: int, hold_s: int) -> None:
        self.tmp, self.rate, self.hold_s = tmp, rate, hold_s
        self.uas = Sipp(
            "uas_answer",
            workdir=tmp,
            timeout=hold_s,
            timeout_error=False,
            trace_msg=False,
            name="uas",
        )
        self.uas.start()
        self.uas.wait_listening()
        opts: dict[str, Any] = {"log_level": "warning"}
        if db == "none":
            opts["db"] = "none"
        self.server = SipdlgProcess(tmp, uas_port=self.uas.port, ready_timeout=30, **opts).start()
        assert self.server.mi_port is not None and self.server.proc is not None
        self.pid = self.server.proc.pid
        self.mi = Mi("127.0.0.1", self.server.mi_port, timeout=300)
        self.uacs: list[Sipp] = []
        self.total = 0

    def add(self, n: int) -> float:
        uac = Sipp(
            "uac_wait_bye", workdir=self.tmp, remote=self.server.sip_address, calls=n,
            rate=self.rate, limit=n, timeout=self.hold_s, timeout_error=False,
            trace_msg=False, name=f"uac-{len(self.uacs)}",
        )  # fmt: skip
        self.uacs.append(uac)
        t0 = time.monotonic()
        uac.start()
        self.total += n
        got = wait_stat(self.mi, "active_dialogs", self.total, timeout=n / self.rate * 3 + 60)
        if got < self.total:
            raise RuntimeError(f"only {got} of {self.total} dialogs established")
        return time.monotonic() - t0

    def close(self) -> None:
        self.mi.close()
        for uac in self.uacs:
            if uac.running:
                uac._kill()
        self.server.stop()
        if self.uas.running:
            self.uas._kill()


# ------------------------------------------------------------------------------ SIP probe


def _probe(host: str, port: int, rate: float, stop: object, out: str) -> None:
    """OPTIONS with Max-Forwards 0 every 1/rate s; [send_time, rtt or null] per probe."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    lport = sock.getsockname()[1]
    sent: dict[str, float] = {}
    results: dict[str, list] = {}
    interval = 1.0 / rate
    n = 0
    next_send = time.time()
    stop_at = float("inf")
    while True:
        now = time.time()
        if stop_at == float("inf") and stop.is_set():  # type: ignore[attr-defined]
            stop_at = now
        if now >= stop_at + 0.5:
            break
        if now >= next_send and now < stop_at:
            n += 1
            key = f"p{n}"
            msg = (
                f"OPTIONS sip:probe@{host}:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK{key}\r\n"
                f"From: <sip:probe@127.0.0.1:{lport}>;tag={key}\r\n"
                f"To: <sip:probe@{host}:{port}>\r\nCall-ID: {key}@probe\r\nCSeq: 1 OPTIONS\r\n"
                f"Max-Forwards: 0\r\nContent-Length: 0\r\n\r\n"
            ).encode()
            sent[key] = time.time()
            results[key] = [sent[key], None]
            sock.sendto(msg, (host, port))
            next_send += interval
            if next_send < now - 1:  # we fell behind (starved): do not burst
                next_send = now + interval
        wait = max(0.0, min(next_send - time.time(), 0.05))
        r, _, _ = select.select([sock], [], [], wait)
        if r:
            while True:
                try:
                    data = sock.recv(65535)
                except BlockingIOError:
                    break
                t = time.time()
                i = data.find(b"Call-ID: ")
                if i < 0:
                    i = data.find(b"i: ")
                raw = data[i:].split(b"\r\n", 1)[0].split(b":", 1)[1].strip().split(b"@")[0]
                k = raw.decode()
                if k in sent and results[k][1] is None:
                    results[k][1] = t - sent[k]
    Path(out).write_text(json.dumps(list(results.values())))


def start_probe(port: int, rate: float, out: Path) -> tuple[Any, Any]:
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    proc = ctx.Process(target=_probe, args=("127.0.0.1", port, rate, stop, str(out)), daemon=True)
    proc.start()
    return proc, stop


def split_probes(
    probes: list[Any], windows: list[tuple[float, float]]
) -> tuple[list[float], list[float], int]:
    """(rtts sent inside a window, rtts sent outside, lost inside)."""
    inside: list[float] = []
    outside: list[float] = []
    lost = 0
    for sent, rtt in probes:
        during = any(a <= sent <= b for a, b in windows)
        if rtt is None:
            lost += during
            continue
        (inside if during else outside).append(rtt)
    return inside, outside, lost


# ------------------------------------------------------------------------------ list


def bench_list(counts: list[int], repeat: int, db: str, rate: int, probe_rate: float) -> None:
    print(f"## list: dlg_list (all) wall time, --db {db}, {repeat} runs per count")
    with tempfile.TemporaryDirectory(prefix="sipdlg-mi-") as tmpdir:
        tmp = Path(tmpdir)
        held = Held(tmp, db, rate, hold_s=int(sum(counts) / rate * 3 + 600))
        try:
            for count in counts:
                setup = held.add(count - held.total)
                time.sleep(2)
                rss = rss_bytes(held.pid)
                print(
                    f"{count} dialogs established ({setup:.0f} s to set up), "
                    f"sipdlg RSS {rss / 1e6:.0f} MB",
                    flush=True,
                )
                out = tmp / f"probe-{count}.json"
                windows: list[tuple[float, float]] = []
                times, size = [], 0
                # idle probes first (3 s), then the listings with 1 s idle between them
                probe, stop = start_probe(held.server.port, probe_rate, out)
                time.sleep(3)
                for _ in range(repeat):
                    t0 = time.time()
                    body = held.mi.raw("dlg_list")
                    t1 = time.time()
                    windows.append((t0, t1))
                    times.append(t1 - t0)
                    size = len(body)
                    time.sleep(1.0)
                n = len(json.loads(body)["result"]["Dialogs"])
                stop.set()  # type: ignore[attr-defined]
                probe.join(10)
                probes: list = json.loads(out.read_text()) if out.exists() else []
                inside, outside, lost = split_probes(probes, windows)
                print(
                    f"  dlg_list of {n}: {size / 1e6:.1f} MB, wall time min {min(times):.3f} s, "
                    f"median {median(times):.3f} s, max {max(times):.3f} s  "
                    f"(runs: {', '.join(f'{t:.3f}' for t in times)})"
                )
                print(
                    f"  SIP OPTIONS→483 round trip while listing ({len(inside)} probes, "
                    f"{lost} lost): p50 {pct(inside, 50) * 1e3:.2f} ms, p99 "
                    f"{pct(inside, 99) * 1e3:.2f} ms, max {max(inside or [0]) * 1e3:.2f} ms;"
                    f" idle ({len(outside)}): p50 {pct(outside, 50) * 1e3:.2f} ms, p99 "
                    f"{pct(outside, 99) * 1e3:.2f} ms",
                    flush=True,
                )
        finally:
            held.close()


# ------------------------------------------------------------------------------ bye


def capture_byes(pcap: Path, ports: dict[int, str]) -> dict[str, dict[str, float]]:
    """Call-ID → {"caller"|"callee": first BYE timestamp} from a capture."""
    args = [
        "tshark",
        "-r",
        str(pcap),
        "-Y",
        'sip.Method == "BYE"',
        "-T",
        "fields",
        "-e",
        "frame.time_epoch",
        "-e",
        "sip.Call-ID",
        "-e",
        "udp.dstport",
    ]
    for p in ports:
        args[3:3] = ["-d", f"udp.port=={p},sip"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=300).stdout
    byes: dict[str, dict[str, float]] = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or not parts[2].isdigit():
            continue
        side = ports.get(int(parts[2]))
        if side is None:
            continue
        byes.setdefault(parts[1], {}).setdefault(side, float(parts[0]))
    return byes


def bench_bye(calls: int, db: str, rate: int, gap: float) -> None:
    print(f"## bye: dlg_end_dlg → BYE on the wire to caller and callee, {calls} calls, --db {db}")
    if shutil.which("dumpcap") is None or shutil.which("tshark") is None:
        raise SystemExit("dumpcap/tshark needed (apt-get install tshark)")
    with tempfile.TemporaryDirectory(prefix="sipdlg-mibye-") as tmpdir:
        tmp = Path(tmpdir)
        held = Held(tmp, db, rate, hold_s=int(calls / rate * 3 + 300))
        cap = None
        try:
            uac_port = free_port("udp")
            # the uac's port must be known for the capture filter: fix it before add()
            held.add_port = uac_port  # type: ignore[attr-defined]
            uac = Sipp(
                "uac_wait_bye", workdir=tmp, remote=held.server.sip_address, calls=calls,
                rate=rate, limit=calls, timeout=held.hold_s, timeout_error=False,
                trace_msg=False, name="uac-bye", local_port=uac_port,
            )  # fmt: skip
            held.uacs.append(uac)
            uac.start()
            held.total = calls
            got = wait_stat(held.mi, "active_dialogs", calls, timeout=calls / rate * 3 + 60)
            assert got >= calls, f"{got} dialogs"
            listing = json.loads(held.mi.raw("dlg_list"))["result"]["Dialogs"]
            ids = [(d["ID"], d["callid"]) for d in listing if d["state"] == 4]
            pcap = tmp / "byes.pcap"
            ports = {uac_port: "caller", held.uas.port: "callee"}
            flt = " or ".join(f"udp dst port {p}" for p in ports)
            cap = subprocess.Popen(
                ["dumpcap", "-q", "-i", "lo", "-f", flt, "-P", "-w", str(pcap)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(2.5)
            sent: dict[str, float] = {}
            http_rtt: list[float] = []
            for did, callid in ids:
                t0 = time.time()
                reply = held.mi.raw("dlg_end_dlg", {"dialog_id": did})
                t1 = time.time()
                if b'"result":"OK"' not in reply:
                    print(f"  {did}: {reply[:200]!r}")
                    continue
                sent[callid] = t0
                http_rtt.append(t1 - t0)
                time.sleep(gap)
            time.sleep(2)
            cap.terminate()
            cap.wait(10)
            cap = None
            byes = capture_byes(pcap, ports)
            caller, callee, both, missing = [], [], [], 0
            for callid, t0 in sent.items():
                b = byes.get(callid, {})
                if "caller" not in b or "callee" not in b:
                    missing += 1
                    continue
                caller.append(b["caller"] - t0)
                callee.append(b["callee"] - t0)
                both.append(max(b["caller"], b["callee"]) - t0)
            ended = held.mi.stat("active_dialogs")

            def row(label: str, v: list[float]) -> str:
                return (
                    f"  {label:28s} p50 {pct(v, 50) * 1e3:6.2f} ms  p99 {pct(v, 99) * 1e3:6.2f}"
                    f" ms  max {max(v or [0]) * 1e3:6.2f} ms  (n={len(v)})"
                )

            print(
                f"{len(sent)} dlg_end_dlg OK, {missing} without both BYEs captured, "
                f"{ended} dialogs still active 2 s later"
            )
            print(row("MI request → BYE to caller", caller))
            print(row("MI request → BYE to callee", callee))
            print(row("MI request → both BYEs", both))
            print(row("MI HTTP round trip", http_rtt))
            res = uac.stop(grace=3)
            print(
                f"  SIPp uac: {res.successful} calls ended by the BYE and answered, "
                f"{res.failed} failed"
            )
        finally:
            if cap is not None:
                cap.kill()
            held.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["list", "bye", "all"])
    parser.add_argument("--counts", default="10000,50000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--calls", type=int, default=1000, help="bye: calls to end")
    parser.add_argument("--gap", type=float, default=0.005, help="bye: pause between ends")
    parser.add_argument("--db", choices=["none", "default"], default="none")
    parser.add_argument("--rate", type=int, default=500, help="call set-up rate")
    parser.add_argument("--probe-rate", type=float, default=200, help="list: OPTIONS per s")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    print_header("bench/mi.py: MI dlg_list and dlg_end_dlg")
    if args.what in ("bye", "all"):
        bench_bye(args.calls, args.db, args.rate, args.gap)
    if args.what in ("list", "all"):
        counts = [int(c) for c in args.counts.split(",")]
        bench_list(counts, args.repeat, args.db, args.rate, args.probe_rate)


if __name__ == "__main__":
    main()

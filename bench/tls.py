"""Calls/s and sipdlg's CPU per call over TLS compared with UDP, in one run (docs/tls.md).

SIPp from Debian has no TLS, so both ends are Python (``tests/helpers/sip_peer.py``), in this
one process on uvloop: ``--workers`` callers, each on its own UDP socket or TLS connection,
place calls back to back (INVITE, 100, 180, 200, ACK, BYE, 200, no pause: 7 messages in and
7 out at sipdlg) through one ``sipdlg serve`` whose next hop keeps the inbound transport, to
one callee listening on UDP and TLS (the same port number).  Modes, in alternating steps of
``--seconds`` each, ``--rounds`` times:

* ``udp``: the baseline;
* ``tls``: persistent TLS connections (phones keep theirs open: the handshake is paid once);
* ``tls-new``: a new TLS connection (and handshake) for every call, closed after its BYE;
  sipdlg's connection to the callee stays up.

Reported per step: calls completed per second, sipdlg's CPU milliseconds per call
(utime+stime from /proc, the figure to compare: the Python load generator, not sipdlg, sets
the ceiling of calls/s here) and the generator's own CPU share.

    python bench/tls.py                            # 3 rounds of udp, tls, tls-new, 10 s each
    python bench/tls.py --rounds 1 --seconds 5 --workers 20
    python bench/tls.py --key rsa                  # RSA 2048 certificates (ECDSA P-256 else)
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import cpu_seconds, print_header
from helpers import LOOPBACK, SipdlgProcess, free_port
from helpers.sip_peer import Call, Peer, PeerClosed, connect, serve_uas

MODES = ("udp", "tls", "tls-new")


@dataclass
class Step:
    mode: str
    calls: int
    failed: int
    seconds: float
    sipdlg_cpu: float
    generator_cpu: float

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    @property
    def cpu_ms_per_call(self) -> float:
        return 1000 * self.sipdlg_cpu / max(1, self.calls)


class Rig:
    """sipdlg, the callee, and how callers reach sipdlg in each mode."""

    def __init__(self, folder: Path, key_type: str) -> None:
        import trustme  # a test dependency, like the rest of the harness

        key = trustme.KeyType[key_type.upper()]
        ca = trustme.CA(key_type=key)
        self.ca_file = folder / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        leaf = ca.issue_cert(LOOPBACK, key_type=key)  # the leaf's own key: not the CA's
        leaf.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
        leaf.private_key_pem.write_to_path(str(folder / "key.pem"))
        self.uas_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        leaf.configure_cert(self.uas_tls)
        self.caller_tls = ssl.create_default_context(cafile=str(self.ca_file))
        self.uas_port = free_port("both")
        self.tls_port = free_port("tcp")
        self.server = SipdlgProcess(
            folder,
            next_hop=f"{LOOPBACK}:{self.uas_port}",  # no transport: the inbound one
            mi=False,
            db="none",
            log_level="warning",
            tls_cert=str(folder / "cert.pem"),
            tls_key=str(folder / "key.pem"),
            tls_ca=str(self.ca_file),
            extra_args=["--listen", f"tls:{LOOPBACK}:{self.tls_port}"],
        )

    async def start(self) -> None:
        await serve_uas(LOOPBACK, self.uas_port, udp=True, record=False)
        await serve_uas(LOOPBACK, self.uas_port, self.uas_tls, record=False)
        await asyncio.to_thread(self.server.start)

    async def caller(self, mode: str) -> Peer:
        if mode == "udp":
            return await connect(LOOPBACK, self.server.port, udp=True, record=False)
        return await connect(LOOPBACK, self.tls_port, self.caller_tls, record=False)

    async def step(self, mode: str, seconds: float, workers: int) -> Step:
        ruri = f"sip:callee@{LOOPBACK}:{self.uas_port}"
        done = failed = 0
        persistent = mode != "tls-new"
        peers = [await self.caller(mode) for _ in range(workers)] if persistent else []
        assert self.server.proc is not None
        pid = self.server.proc.pid
        cpu0, own0, t0 = cpu_seconds(pid), time.process_time(), time.monotonic()
        deadline = t0 + seconds

        async def work(index: int) -> None:
            nonlocal done, failed
            while time.monotonic() < deadline:
                peer = peers[index] if persistent else await self.caller(mode)
                call = Call(peer, ruri)
                try:
                    if (await call.invite(5)).status == 200:
                        call.ack()
                        if (await call.bye(5)).status == 200:
                            done += 1
                            continue
                    failed += 1
                except (TimeoutError, PeerClosed):
                    failed += 1
                finally:
                    if not persistent:
                        peer.close()

        await asyncio.gather(*(work(i) for i in range(workers)))
        elapsed = time.monotonic() - t0
        result = Step(
            mode,
            done,
            failed,
            elapsed,
            cpu_seconds(pid) - cpu0,
            time.process_time() - own0,
        )
        for peer in peers:
            peer.close()
        return result


async def main_async(opts: argparse.Namespace) -> list[Step]:
    with tempfile.TemporaryDirectory(prefix="sipdlg-bench-tls-") as tmp:
        rig = Rig(Path(tmp), opts.key)
        await rig.start()
        try:
            steps: list[Step] = []
            print(
                f"{'mode':8} {'calls/s':>8} {'failed':>6} {'sipdlg CPU ms/call':>19} "
                f"{'generator CPU':>14}",
                flush=True,
            )
            for _ in range(opts.rounds):
                for mode in opts.modes:
                    step = await rig.step(mode, opts.seconds, opts.workers)
                    steps.append(step)
                    print(
                        f"{mode:8} {step.rate:8.0f} {step.failed:6d} "
                        f"{step.cpu_ms_per_call:19.3f} {step.generator_cpu / step.seconds:13.0%}",
                        flush=True,
                    )
            return steps
        finally:
            await asyncio.to_thread(rig.server.stop)


def summary(steps: list[Step], modes: list[str]) -> None:
    print("\nmedians over the rounds (ratio to udp)")
    base: dict[str, float] = {}
    for mode in modes:
        mine = [s for s in steps if s.mode == mode]
        rate = statistics.median(s.rate for s in mine)
        cpu = statistics.median(s.cpu_ms_per_call for s in mine)
        if mode == "udp":
            base = {"rate": rate, "cpu": cpu}
        ratio = (
            f"  ({rate / base['rate']:.2f}x calls/s, {cpu / base['cpu']:.2f}x CPU)" if base else ""
        )
        print(f"{mode:8} {rate:8.0f} calls/s  {cpu:.3f} ms CPU/call{ratio}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="length of one step (10)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of every mode (3)")
    p.add_argument("--workers", type=int, default=50, help="concurrent callers (50)")
    p.add_argument(
        "--key",
        choices=["ecdsa", "rsa"],
        default="ecdsa",
        help="key type of the certificates (ecdsa: P-256; rsa: 2048 bits)",
    )
    p.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}"
    )
    opts = p.parse_args()
    opts.modes = [m for m in opts.modes.split(",") if m]
    if unknown := set(opts.modes) - set(MODES):
        p.error(f"unknown modes: {', '.join(sorted(unknown))}")
    print_header("sipdlg calls over TLS and UDP (bench/tls.py)")
    print(
        f"# {opts.workers} callers, steps of {opts.seconds:g} s, {opts.rounds} rounds, "
        f"{opts.key.upper()} certificates"
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    steps = asyncio.run(main_async(opts))
    summary(steps, opts.modes)


if __name__ == "__main__":
    main()

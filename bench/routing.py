"""What routing by DNS costs once the answer is cached (issue 12, Performance).

The same load twice per round, alternating: SIPp ``uac`` → sipdlg → SIPp ``uas`` on loopback
UDP, once with a literal next hop (``--next-hop 127.0.0.1:PORT``), once with a domain name
found by SRV (``--next-hop pbx.bench``, answered by a DNS server of this script's own on
127.0.0.1 with a TTL longer than the run, so the engine's cache answers every call after the
first).  Reported: sipdlg's CPU time per completed call for each, and their ratio in the same
round; the target is under 5 % more with DNS.

    PYTHONPATH=$PWD/build/native python bench/routing.py --rate 1000 --seconds 20 --rounds 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import busy_cpus, print_header, start_uas, tree_cpu_seconds
from helpers import LOOPBACK, SipdlgProcess, Sipp, SippError
from helpers.dns_server import DnsServer


def step(tmp: Path, rate: int, seconds: float, by_dns: bool) -> tuple[float, int, int, int]:
    """(CPU µs per call, calls completed, calls offered, DNS queries) for one run."""
    offered = int(rate * seconds)
    tag = f"{'dns' if by_dns else 'ip'}-{int(time.time() * 1000) % 100000}"
    uas = start_uas(tmp, seconds, tag)
    records = {
        ("_sip._udp.pbx.bench", "SRV"): [f"10 0 {uas.port} a.pbx.bench."],
        ("a.pbx.bench", "A"): [LOOPBACK],
    }
    dns = DnsServer(records, ttl=3600).start()
    opts: dict[str, object] = {"db": "none", "log_level": "warning"}
    if by_dns:
        opts.update(next_hop="pbx.bench", dns_server=dns.address)
    else:
        opts["next_hop"] = uas.address
    server = SipdlgProcess(tmp, name=f"sipdlg-{tag}", **opts).start()  # type: ignore[arg-type]
    try:
        assert server.proc is not None
        pid = server.proc.pid
        cpu0 = tree_cpu_seconds(pid)
        uac = Sipp(
            "uac", workdir=tmp, remote=server.sip_address, calls=offered, rate=rate,
            pause_ms=100, timeout=seconds * 1.5 + 15, timeout_error=False, trace_msg=False,
            name=f"uac-{tag}",
        )  # fmt: skip
        try:
            res = uac.run(timeout=seconds * 1.5 + 40)
        except SippError:
            res = uac.collect()
        cpu = tree_cpu_seconds(pid) - cpu0
        done = res.successful
        return cpu / max(1, done) * 1e6, done, offered, sum(dns.queries.values())
    finally:
        server.stop()
        uas.stop()
        dns.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print_header(f"routing by DNS vs a literal next hop, {args.rate} calls/s")
    with tempfile.TemporaryDirectory(prefix="sipdlg-routing-") as tmp:
        ratios = []
        for n in range(args.rounds):
            figures = {}
            for by_dns in (False, True) if n % 2 == 0 else (True, False):
                busy = busy_cpus(1.0)
                us, done, offered, queries = step(Path(tmp), args.rate, args.seconds, by_dns)
                label = "DNS (SRV)" if by_dns else "literal"
                figures[by_dns] = us
                print(
                    f"round {n + 1} {label:9s}: {us:6.0f} µs/call, {done}/{offered} calls, "
                    f"{queries} DNS queries, busy-before {busy:.2f}",
                    flush=True,
                )
            ratios.append(figures[True] / figures[False])
            print(f"round {n + 1}: DNS / literal = {ratios[-1]:.3f}", flush=True)
        print(f"mean ratio {sum(ratios) / len(ratios):.3f}")


if __name__ == "__main__":
    main()

"""Overload: calls offered well above what sipdlg sustains, with overload control on and off,
in the same run (issue 15).

SIPp's ``uac_call_or_503`` scenario (a call answered and hung up after ``--pause-ms``, or a 503
ACKed: under overload that is a right answer) → sipdlg → SIPp ``uas``, loopback UDP, ``--db
none``.  Reported per configuration: calls completed (from sipdlg's ended-call counters:
"Downstream BYE"), per second; calls turned away with 503; and SIPp's failed calls, which are
what matters: a call that failed after the 503 path was not taken (timeouts, lost BYEs).

    PYTHONPATH=$PWD/build/native python bench/overload.py --rate 3000 --seconds 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import busy_cpus, print_header
from helpers import SipdlgProcess, Sipp, SippError


def scrape(server: SipdlgProcess) -> dict[str, float]:
    url = server.mi_url.replace("/mi", "/metrics")
    out: dict[str, float] = {}
    with urllib.request.urlopen(url, timeout=30) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("#") or " " not in line:
                continue
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def step(tmp: Path, rate: int, seconds: float, pause_ms: int, shedding: bool) -> str:
    offered = int(rate * seconds)
    tag = f"{'on' if shedding else 'off'}-{int(time.time() * 1000) % 100000}"
    uas = Sipp(
        "uas", workdir=tmp, timeout=seconds * 3 + 60, timeout_error=False, trace_msg=False,
        name=f"uas-{tag}",
    )  # fmt: skip
    uas.start()
    uas.wait_listening()
    opts: dict[str, object] = {"db": "none", "log_level": "warning"}
    if not shedding:
        opts.update(overload_lag_ms=0, overload_queue_kb=0)
    server = SipdlgProcess(tmp, uas_port=uas.port, name=f"sipdlg-{tag}", **opts).start()  # type: ignore[arg-type]
    try:
        uac = Sipp(
            "uac_call_or_503", workdir=tmp, remote=server.sip_address, calls=offered,
            rate=rate, pause_ms=pause_ms, timeout=seconds * 3 + 30, timeout_error=False,
            trace_msg=False, name=f"uac-{tag}",
        )  # fmt: skip
        started = time.monotonic()
        try:
            res = uac.run(timeout=seconds * 3 + 60)
        except SippError:
            res = uac.collect()
        elapsed = time.monotonic() - started
        m = scrape(server)
        completed = m.get('sipdlg_dialogs_ended_total{reason="Downstream BYE"}', 0.0)
        shed = m.get("sipdlg_overload_shed_invites_total", 0.0)
        return (
            f"overload control {'on ' if shedding else 'off'}: offered {offered} at {rate}/s; "
            f"completed {completed:.0f} ({completed / seconds:.0f}/s over the offered "
            f"{seconds:g} s, run {elapsed:.0f} s); 503 {shed:.0f}; SIPp failed {res.failed}"
        )
    finally:
        server.stop()
        uas.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--pause-ms", type=int, default=100)
    args = parser.parse_args()
    print_header(f"overload: {args.rate} calls/s offered for {args.seconds:g} s")
    with tempfile.TemporaryDirectory(prefix="sipdlg-overload-") as tmp:
        for shedding in (True, False):
            busy = busy_cpus(1.0)
            line = step(Path(tmp), args.rate, args.seconds, args.pause_ms, shedding)
            print(f"{line}  (busy-before {busy:.2f})", flush=True)


if __name__ == "__main__":
    main()

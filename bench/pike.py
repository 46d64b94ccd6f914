"""What the per-source rate limit (engine/pike.py) costs per request, on the engine's hot path:
a source that is exempt (the next hop, a trusted network) and one that is counted, among
10,000 tracked sources.  Compare with ``bench/engine_calls.py``'s µs per message.

    python bench/pike.py
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.dlg_table import DialogTable  # noqa: E402
from engine.events import Event  # noqa: E402
from engine.message import parse  # noqa: E402
from engine.pike import Pike, PikeConfig  # noqa: E402

REQUEST = parse(
    b"OPTIONS sip:x@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n"
    b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:x@example.com>\r\nCall-ID: c\r\n"
    b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)
CALLS = DialogTable()
SOURCES = [f"198.51.{i // 256}.{i % 256}" for i in range(10000)]
NUMBER = 1_000_000


def main() -> None:
    pike = Pike(PikeConfig(requests=10**9, trusted=("10.0.0.0/8",)), exempt={"203.0.113.1"})
    events: list[Event] = []
    clock = [0.0]

    def exempt() -> None:
        pike.drops(REQUEST, "203.0.113.1", 1.0, events, CALLS)

    def counted() -> None:
        clock[0] += 1e-5
        source = SOURCES[int(clock[0] * 1e5) % len(SOURCES)]
        pike.drops(REQUEST, source, clock[0], events, CALLS)

    for name, fn in (("exempt source", exempt), ("counted source", counted)):
        best = min(timeit.repeat(fn, number=NUMBER, repeat=3))
        print(f"{name}: {best / NUMBER * 1e6:.2f} µs per request")
    print(f"sources tracked: {len(pike)}")


if __name__ == "__main__":
    main()

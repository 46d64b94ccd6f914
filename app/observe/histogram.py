"""A fixed-bucket histogram of durations, cheap enough to observe on the event loop, exported
by ``/metrics`` (app/observe/metrics.py) in Prometheus's cumulative form."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

#: Buckets for what stops or delays the event loop (lag, collector pauses, commit waits).
LOOP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    """Counts per bucket (upper bounds ``bounds``, then +Inf), their sum and the maximum."""

    __slots__ = ("bounds", "counts", "total", "max", "last")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.max = 0.0
        self.last = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.last = value
        if value > self.max:
            self.max = value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, count)`` pairs as Prometheus wants them, +Inf last."""
        out: list[tuple[str, float]] = []
        acc = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            acc += n
            out.append((str(bound), acc))
        out.append(("+Inf", acc + self.counts[-1]))
        return out

"""A sans-I/O timer queue: the engine schedules callbacks at deadlines; the shell says when.

Cancelling is lazy (a cancelled entry is skipped when it comes due), which keeps cancel O(1)
on the hot path where almost every retransmission timer is cancelled by the answer.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any


class Timer:
    __slots__ = ("when", "callback", "args", "active")

    def __init__(self, when: float, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.active = True

    def cancel(self) -> None:
        self.active = False


class TimerQueue:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> Timer:
        timer = Timer(when, callback, args)
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, timer))
        return timer

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and not heap[0][2].active:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def run_due(self, now: float) -> int:
        """Run every active timer whose deadline is not after ``now``; return how many ran."""
        heap = self._heap
        ran = 0
        while heap and heap[0][0] <= now:
            timer = heapq.heappop(heap)[2]
            if timer.active:
                timer.active = False
                timer.callback(*timer.args)
                ran += 1
        return ran

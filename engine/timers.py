"""A sans-I/O timer queue: the engine schedules callbacks at deadlines; the shell says when.

Cancelling is lazy (a cancelled entry is skipped when it comes due), which keeps cancel O(1)
on the hot path where almost every retransmission timer is cancelled by the answer.  Long
timers (a 12-hour dialog lifetime) would otherwise pile up as dead entries, so the heap is
compacted whenever more than half of it is cancelled.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any


def _noop(*args: Any) -> None:
    return None


class Timer:
    __slots__ = ("when", "callback", "args", "active", "queue")

    def __init__(
        self,
        when: float,
        callback: Callable[..., None],
        args: tuple[Any, ...],
        queue: TimerQueue,
    ) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.active = True
        self.queue: TimerQueue | None = queue

    def cancel(self) -> None:
        if self.active:
            self.active = False
            # Drop what the callback holds (a transaction, a dialog) now, not when the dead
            # entry leaves the heap, possibly hours later.
            self.callback = _noop
            self.args = ()
            queue = self.queue
            if queue is not None:
                queue._cancelled += 1
                if queue._cancelled > 4096 and queue._cancelled * 2 > len(queue._heap):
                    queue._compact()


class TimerQueue:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = 0
        self._cancelled = 0

    def __len__(self) -> int:
        return len(self._heap)

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> Timer:
        timer = Timer(when, callback, args, self)
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, timer))
        return timer

    def _compact(self) -> None:
        # In place: run_due may be iterating this very list when a callback cancels timers.
        self._heap[:] = [entry for entry in self._heap if entry[2].active]
        heapq.heapify(self._heap)
        self._cancelled = 0

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and not heap[0][2].active:
            heapq.heappop(heap)[2].queue = None
            self._cancelled -= 1
        return heap[0][0] if heap else None

    def run_due(self, now: float) -> int:
        """Run every active timer whose deadline is not after ``now``; return how many ran."""
        heap = self._heap
        ran = 0
        while heap and heap[0][0] <= now:
            timer = heapq.heappop(heap)[2]
            timer.queue = None
            if not timer.active:
                self._cancelled -= 1
            else:
                # Fired timers hold nothing: a transaction keeps its last timer, and a
                # callback still in it would be a reference cycle back to the transaction.
                timer.active = False
                callback, args = timer.callback, timer.args
                timer.callback = _noop
                timer.args = ()
                callback(*args)
                ran += 1
        return ran

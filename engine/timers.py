"""A sans-I/O timer queue: the engine schedules callbacks at deadlines; the shell says when.

Almost every timer of a SIP proxy has one of a few fixed durations (Timers A-M are multiples of
T1, T4 or 64*T1; pings and guards come from the settings), so :meth:`TimerQueue.call_later`
puts each in a FIFO *lane* per duration: appending is O(1) and a lane is sorted by deadline by
construction, because the engine's clock never goes back.  Only the rest (dialog lifetimes,
which ``dlg_set_timeout`` can make anything, and absolute deadlines) go to a heap.

Cancelling is lazy everywhere (a cancelled entry is skipped when it reaches the front), which
keeps cancel O(1) on the hot path where almost every retransmission timer is cancelled by the
answer.  In a lane a dead entry leaves by itself within the lane's duration; the heap's long
timers (a 12-hour lifetime) would pile up, so the heap is compacted whenever more than half
of it is cancelled.  A cancelled or fired timer drops its callback and arguments at once: a
transaction keeps its last timer, and a callback still in it would be a reference cycle.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Durations up to this long get a FIFO lane; longer ones go to the heap.
LANE_MAX_DELAY = 300.0
#: At most this many lanes (distinct durations); beyond, the heap takes the timer.
MAX_LANES = 32


def _noop(*args: Any) -> None:
    return None


@dataclass(slots=True, eq=False)
class Timer:
    when: float
    #: Scheduling order: ties between equal deadlines go to the earlier timer.
    seq: int
    callback: Callable[..., None]
    args: tuple[Any, ...]
    #: The queue while this timer is in its heap (its cancel is counted for compaction).
    queue: TimerQueue | None
    active: bool = True

    def cancel(self) -> None:
        if self.active:
            self.active = False
            # Drop what the callback holds (a transaction, a dialog) now, not when the dead
            # entry leaves the queue, possibly hours later.
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
        self._lanes: dict[float, deque[Timer]] = {}
        self._seq = 0
        self._cancelled = 0

    def __len__(self) -> int:
        return len(self._heap) + sum(len(lane) for lane in self._lanes.values())

    def call_later(
        self, now: float, delay: float, callback: Callable[..., None], *args: Any
    ) -> Timer:
        """Run ``callback(*args)`` at ``now + delay``; fixed delays take the O(1) lane."""
        when = now + delay
        if delay <= LANE_MAX_DELAY:
            lane = self._lanes.get(delay)
            if lane is None and len(self._lanes) < MAX_LANES:
                lane = self._lanes[delay] = deque()
            if lane is not None and (not lane or lane[-1].when <= when):
                self._seq += 1
                timer = Timer(when, self._seq, callback, args, None)
                lane.append(timer)
                return timer
        return self.call_at(when, callback, *args)

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> Timer:
        """Run ``callback(*args)`` at ``when`` (the heap: any deadline)."""
        self._seq += 1
        timer = Timer(when, self._seq, callback, args, self)
        heapq.heappush(self._heap, (when, self._seq, timer))
        return timer

    def _compact(self) -> None:
        # In place: run_due may be iterating this very list when a callback cancels timers.
        self._heap[:] = [entry for entry in self._heap if entry[2].active]
        heapq.heapify(self._heap)
        self._cancelled = 0

    def _first(self) -> tuple[Timer | None, deque[Timer] | None]:
        """The next live timer and its lane (None: the heap); dead entries at the fronts are
        dropped on the way.  Nothing live is removed."""
        heap = self._heap
        while heap and not heap[0][2].active:
            heapq.heappop(heap)[2].queue = None
            self._cancelled -= 1
        best = heap[0][2] if heap else None
        best_lane: deque[Timer] | None = None
        for lane in self._lanes.values():
            while lane and not lane[0].active:
                lane.popleft()
            if lane:
                head = lane[0]
                if best is None or (head.when, head.seq) < (best.when, best.seq):
                    best = head
                    best_lane = lane
        return best, best_lane

    def next_deadline(self) -> float | None:
        first = self._first()[0]
        return first.when if first is not None else None

    def run_due(self, now: float) -> int:
        """Run every active timer whose deadline is not after ``now``, in deadline order;
        return how many ran."""
        ran = 0
        while True:
            timer, lane = self._first()
            if timer is None or timer.when > now:
                return ran
            if lane is None:
                heapq.heappop(self._heap)
                timer.queue = None
            else:
                lane.popleft()
            timer.active = False
            callback, args = timer.callback, timer.args
            timer.callback = _noop
            timer.args = ()
            callback(*args)
            ran += 1

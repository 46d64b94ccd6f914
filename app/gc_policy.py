"""How the server runs CPython's cyclic garbage collector: short pauses, bounded memory.

Nothing on the call path creates reference cycles (``tests/test_no_cycles.py`` fails the suite
if one appears), so every call's objects are freed by reference counting the moment a call and
its transactions end.  The cyclic collector is only a safety net, and it must never be what
stops the event loop.  CPython's own trigger cannot promise that under SIP load: it counts
allocations *minus deallocations*, and the transactions that end 32 s after each call free
about as many objects as new calls allocate, so the young generation silently grows to 100,000+
objects and a young or middle collection stops the loop for 100+ ms (measured at 1000 calls/s).

So the automatic collector is off, and this policy collects on a clock instead:

* every ``YOUNG_EVERY`` seconds the young generation (what was allocated since: at 1000 calls/s
  a few thousand objects, about a millisecond);
* every ``MIDDLE_EVERY``-th time the middle generation too, and then its survivors are frozen
  (:func:`gc.freeze`): they have lived half a second, they are the calls' transactions and
  dialogs, and later collections no longer scan them.  Frozen objects are still freed by
  reference counting.

Only garbage *cycles* among frozen objects would wait.  A full rescan of the frozen objects
costs about half a microsecond per object (0.3 s with 50,000 held calls), so it is not done on a
schedule by default.  Instead a watchdog compares the memory blocks Python has allocated
(:func:`sys.getallocatedblocks`, cheap: counting the frozen objects themselves walks all of
them, 80 ms at 1000 calls/s) with what the engine holds (dialogs, transactions, timers:
``live()``) every ``WATCH_EVERY`` seconds.  Blocks that the engine's state does not explain
(more than ``PER_LIVE`` per held item plus ``SLACK``) mean a leak: it is logged at WARNING with
the figures and a rescan frees it, so a leak is bounded and visible
(``sipdlg_gc_rescan_freed_objects_total``).  ``rescan_period`` (``--gc-rescan-period``) adds a
rescan on a schedule for those who want one.  Pauses are measured and exported.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import Metric

from .observe.histogram import LOOP_BUCKETS, Histogram
from .observe.metrics import counter, gauge, histogram

log = logging.getLogger("sipdlg.gc")

YOUNG_EVERY = 0.1
MIDDLE_EVERY = 5
WATCH_EVERY = 10.0
#: Allocated blocks allowed per dialog, transaction or timer the engine holds.
PER_LIVE = 60
#: Blocks allowed beyond that: caches, connections, the MI's state, the allocator's slack.
SLACK = 1_000_000
#: Watchdog rescans at most this often, however the figures look.
MIN_RESCAN_GAP = 600.0


class GcPolicy:
    """Collects on a clock, freezes the survivors, watches the frozen count; measures pauses."""

    def __init__(self, rescan_period: float = 0.0, live: Callable[[], int] | None = None) -> None:
        self.rescan_period = rescan_period
        self.live = live or (lambda: 0)
        self.pauses = [0] * 3
        self.hist = Histogram(LOOP_BUCKETS)
        self.rescans = 0
        self.rescan_freed = 0
        #: Allocated blocks that need no explanation: what start-up left, raised by a rescan
        #: that found them alive after all.
        self.floor = 0
        self._last_rescan = float("-inf")
        self._started = 0.0
        self._ticks = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._installed = False

    def install(self) -> None:
        """Freeze what start-up allocated (it lives as long as the process) and take over."""
        gc.collect()
        gc.freeze()
        self.floor = sys.getallocatedblocks()
        gc.disable()
        if not self._installed:
            gc.callbacks.append(self._on_gc)
            self._installed = True

    def start(self) -> None:
        """The collection clock and the watchdog (need a running loop)."""
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._collect_every()), loop.create_task(self._watch())]

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        if self._installed:
            gc.callbacks.remove(self._on_gc)
            self._installed = False
            gc.enable()

    def tick(self) -> None:
        """One step of the clock: the young generation, every ``MIDDLE_EVERY``-th time the
        middle one too, whose survivors are then frozen."""
        self._ticks += 1
        if self._ticks % MIDDLE_EVERY:
            gc.collect(0)
        else:
            gc.collect(1)
            gc.freeze()

    def budget(self) -> int:
        """Allocated blocks the engine's state explains."""
        return self.floor + PER_LIVE * self.live() + SLACK

    def check(self, now: float) -> bool:
        """The watchdog: rescan when the allocated blocks outgrow the budget; True if it did."""
        blocks = sys.getallocatedblocks()
        budget = self.budget()
        if blocks <= budget or now - self._last_rescan < MIN_RESCAN_GAP:
            return False
        log.warning(
            "gc: %d memory blocks allocated where the %d dialogs, transactions and timers held "
            "explain %d: rescanning for leaked reference cycles",
            blocks,
            self.live(),
            budget,
        )
        self.rescan(now)
        # What is left is alive; more than the budget is the new normal (a cache that grew,
        # say), not a reason to rescan again at the next check.
        self.floor = max(self.floor, sys.getallocatedblocks() - PER_LIVE * self.live() - SLACK)
        return True

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.pauses[info["generation"]] += 1
        self.hist.observe(time.perf_counter() - self._started)

    @property
    def pause_max(self) -> float:
        return self.hist.max

    def rescan(self, now: float | None = None) -> int:
        """Put every frozen object back under the collector and collect: cycles among them
        are freed.  Returns how many objects were freed."""
        self._last_rescan = time.monotonic() if now is None else now
        gc.unfreeze()
        started = time.perf_counter()
        freed = gc.collect()
        elapsed = time.perf_counter() - started
        gc.freeze()
        self.rescans += 1
        self.rescan_freed += freed
        (log.warning if freed else log.info)(
            "gc rescan: %d unreachable objects freed in %.3f s", freed, elapsed
        )
        return freed

    async def _collect_every(self) -> None:
        while True:
            await asyncio.sleep(YOUNG_EVERY)
            self.tick()

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        last_scheduled = loop.time()
        while True:
            await asyncio.sleep(WATCH_EVERY)
            now = loop.time()
            if self.rescan_period > 0 and now - last_scheduled >= self.rescan_period:
                last_scheduled = now
                self.rescan(now)
            else:
                self.check(now)

    def metrics(self) -> Iterator[Metric]:
        """The collector's part of ``/metrics``."""
        yield histogram(
            "sipdlg_gc_pause_seconds", "Pauses of the cyclic garbage collector", self.hist
        )
        yield gauge("sipdlg_gc_pause_max_seconds", "Longest collector pause so far", self.pause_max)
        yield gauge(
            "sipdlg_memory_allocated_blocks",
            "Memory blocks Python has allocated (the gc watchdog's measure)",
            self.allocated_blocks(),
        )
        yield gauge(
            "sipdlg_memory_allocated_blocks_budget",
            "Blocks the engine's dialogs, transactions and timers explain (app/gc_policy.py)",
            self.budget(),
        )
        yield counter("sipdlg_gc_rescans", "Full rescans of the frozen objects", self.rescans)
        yield counter(
            "sipdlg_gc_rescan_freed_objects",
            "Unreachable objects the rescans found: leaked reference cycles (0 expected)",
            self.rescan_freed,
        )

    @staticmethod
    def allocated_blocks() -> int:
        return sys.getallocatedblocks()

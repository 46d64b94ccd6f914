"""How the server runs CPython's cyclic garbage collector: short, bounded pauses.

A call leaves a few objects behind for the 32 s its transactions absorb retransmissions (and
a dialog for the whole call).  With the default policy every one of them is rescanned by each
full collection: at 1000 calls/s that is about 700,000 objects and a 0.4-0.8 s stop of the
event loop every few seconds, long enough for SIPp to retransmit (docs/performance.md).

The SIP path creates no reference cycles (checked under ``gc.DEBUG_SAVEALL``: nothing is
collected while calls run), so objects old enough to have survived a middle-generation
collection are moved out of the collector's sight with :func:`gc.freeze`.  They are still
freed by reference counting the moment nothing uses them; only garbage *cycles* among them
would wait, and :meth:`GcPolicy.rescan` brings every frozen object back under the collector
every ``rescan_period`` seconds (one full pause, hourly by default; 0 never) so that nothing
can leak for longer than that.  Pauses are measured and exported (``/metrics``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

from .histogram import Histogram

log = logging.getLogger("sipdlg.gc")

#: Young collections after this many net new container objects; the middle generation after
#: this many young ones.  Bounds a pause to about (THRESHOLD0 * (THRESHOLD1 + 1)) objects.
THRESHOLD0 = 10_000
THRESHOLD1 = 4
#: The oldest generation: nothing reaches it between freezes, so this hardly matters.
THRESHOLD2 = 10
PAUSE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class GcPolicy:
    """Installs the thresholds and the freeze-on-promotion callback; measures every pause."""

    def __init__(self, rescan_period: float = 3600.0) -> None:
        self.rescan_period = rescan_period
        self.pauses = [0] * 3
        self.hist = Histogram(PAUSE_BUCKETS)
        self.rescans = 0
        self._started = 0.0
        self._task: asyncio.Task[None] | None = None
        self._installed = False

    def install(self) -> None:
        """Freeze what start-up allocated (it lives as long as the process) and take over."""
        gc.collect()
        gc.freeze()
        gc.set_threshold(THRESHOLD0, THRESHOLD1, THRESHOLD2)
        if not self._installed:
            gc.callbacks.append(self._on_gc)
            self._installed = True

    def start(self) -> None:
        """The periodic rescan (needs a running loop)."""
        if self.rescan_period > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._rescan_every())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._installed:
            gc.callbacks.remove(self._on_gc)
            self._installed = False

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        generation = info["generation"]
        self.pauses[generation] += 1
        self.hist.observe(pause)
        if generation >= 1:
            # The survivors are long-lived: out of the next collections' way.
            gc.freeze()

    @property
    def pause_max(self) -> float:
        return self.hist.max

    def rescan(self) -> int:
        """Put every frozen object back under the collector and collect: cycles among them
        (none are expected) are freed.  Returns what was collected."""
        gc.unfreeze()
        started = time.perf_counter()
        collected = gc.collect()
        self.rescans += 1
        elapsed = time.perf_counter() - started
        gc.freeze()
        log.info(
            "gc rescan: %d unreachable objects freed in %.3f s, %d objects frozen again",
            collected,
            elapsed,
            gc.get_freeze_count(),
        )
        return collected

    async def _rescan_every(self) -> None:
        while True:
            await asyncio.sleep(self.rescan_period)
            self.rescan()

    @staticmethod
    def frozen() -> int:
        return gc.get_freeze_count()

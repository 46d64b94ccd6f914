"""Overload control: when the event loop falls behind, new calls are turned away early and
cheaply so that the calls already up keep working (RFC 6357 §3, the problem RFC 7339 solves
between servers).

The loop's lag is the measure: a timer asked to fire every ``SAMPLE`` seconds fires late by as
long as the loop was busy with other work (SIP messages, commits, MI).  Past
``overload_lag_ms`` the engine is told to shed (:meth:`engine.proxy.Engine.set_overload`):
new INVITEs get ``503`` with ``Retry-After`` without a transaction, a dialog or a forward,
while responses, ACKs and in-dialog requests are served as before.  It stops once the lag has
stayed under half the threshold for ``overload_recover`` seconds, so it does not flap at the
edge.  Each start and end is logged once, with what was shed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator

from prometheus_client.core import Metric

from ..observe.metrics import counter, gauge

log = logging.getLogger("sipdlg.overload")

#: Seconds between lag samples.
SAMPLE = 0.05


class OverloadControl:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        set_overload: Callable[[int | None], None],
        shed: Callable[[], int],
        *,
        lag_ms: int,
        recover: float,
        retry_after: int,
    ) -> None:
        self.loop = loop
        self.set_overload = set_overload
        self.shed = shed
        self.threshold = lag_ms / 1000.0
        self.recover = recover
        self.retry_after = retry_after
        self.active = False
        self.episodes = 0
        self._since = 0.0
        self._calm_since = 0.0
        self._shed_at_start = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.threshold > 0:
            self._task = self.loop.create_task(self._watch())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch(self) -> None:
        while True:
            due = self.loop.time() + SAMPLE
            await asyncio.sleep(SAMPLE)
            now = self.loop.time()
            self.observe(now - due, now)

    def observe(self, lag: float, now: float) -> None:
        """One lag sample (seconds late) at ``now``."""
        if lag > self.threshold:
            self._calm_since = 0.0
            if not self.active:
                self._begin(lag, now)
        elif self.active:
            if lag > self.threshold / 2:
                self._calm_since = 0.0
            elif not self._calm_since:
                self._calm_since = now
            elif now - self._calm_since >= self.recover:
                self._end(now)

    def _begin(self, lag: float, now: float) -> None:
        self.active = True
        self.episodes += 1
        self._since = now
        self._shed_at_start = self.shed()
        self.set_overload(self.retry_after)
        log.warning(
            "overload: the event loop is %.0f ms behind (limit %.0f ms); new INVITEs get 503 "
            "with Retry-After %d until it keeps up for %g s",
            lag * 1000,
            self.threshold * 1000,
            self.retry_after,
            self.recover,
        )

    def _end(self, now: float) -> None:
        self.active = False
        self.set_overload(None)
        log.warning(
            "overload over after %.1f s: %d new INVITEs were answered 503",
            now - self._since,
            self.shed() - self._shed_at_start,
        )

    def metrics(self) -> Iterator[Metric]:
        yield gauge("sipdlg_overload_active", "1 while new INVITEs are shed (503)", self.active)
        yield counter("sipdlg_overload_episodes", "Times overload control started", self.episodes)
        yield counter(
            "sipdlg_overload_shed_invites", "New INVITEs answered 503 under overload", self.shed()
        )

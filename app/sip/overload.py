"""Overload control: when the event loop falls behind, new calls are turned away early and
cheaply so that the calls already up keep working (RFC 6357 §3, the problem RFC 7339 solves
between servers).

Two measures, sampled every ``SAMPLE`` seconds: the bytes waiting in the kernel's receive
queues of the UDP sockets (``/proc/net/udp``; under a flood of datagrams this is what grows,
measured at 6 MB at 4000 calls/s offered, while the loop's lag stayed under 2 ms), and the
loop's lag (a timer that fires late by as long as the loop was busy: a slow commit, a long MI
listing).  Past ``overload_queue_kb`` or ``overload_lag_ms`` the engine is told to shed
(:meth:`engine.proxy.Engine.set_overload`):
a share of the new INVITEs get ``503`` with ``Retry-After`` without a transaction, a dialog or
a forward, while responses, ACKs and in-dialog requests are served as before.

The share is a feedback loop, not a switch (turning every new call away would drain the queue
and then let the flood back in at once, or keep turning calls away long after the server
could take most of them): each sample over a limit raises it by a tenth of how far over it is
(a loop blocked for ten times the lag limit sheds everything at once); each sample under half
of both limits lowers it, from everything to nothing in ``overload_recover`` seconds.  The
admitted calls settle near what the server can carry.  Each episode's start and end are
logged once, with what was shed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from prometheus_client.core import Metric

from ..observe.metrics import counter, gauge

log = logging.getLogger("sipdlg.overload")

#: Seconds between lag samples.
SAMPLE = 0.05


class OverloadControl:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        set_overload: Callable[[int | None, float], None],
        shed: Callable[[], int],
        *,
        lag_ms: int,
        queue_kb: int,
        recover: float,
        retry_after: int,
        backlog: Callable[[], int] = lambda: 0,
    ) -> None:
        self.loop = loop
        self.set_overload = set_overload
        self.shed = shed
        self.backlog = backlog
        self.threshold = lag_ms / 1000.0
        self.queue_limit = queue_kb * 1024
        self.recover = recover
        self.retry_after = retry_after
        self.active = False
        #: The share of new INVITEs turned away (0..1).
        self.share = 0.0
        self.episodes = 0
        self._since = 0.0
        self._calm_since = 0.0
        self._shed_at_start = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.threshold > 0 or self.queue_limit > 0:
            self._task = self.loop.create_task(self._watch())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch(self) -> None:
        while True:
            due = self.loop.time() + SAMPLE
            await asyncio.sleep(SAMPLE)
            now = self.loop.time()
            self.observe(now - due, now, self.backlog())

    def observe(self, lag: float, now: float, queued: int = 0) -> None:
        """One sample at ``now``: the loop ``lag`` (seconds late), bytes ``queued``."""
        over = max(
            lag / self.threshold if self.threshold > 0 else 0.0,
            queued / self.queue_limit if self.queue_limit > 0 else 0.0,
        )
        share = self.share
        if over > 1.0:
            share = min(1.0, share + 0.1 * over)
        elif over < 0.5 and share > 0:
            share = max(0.0, share - SAMPLE / self.recover)
        if share == self.share:
            return
        self.share = share
        if share and not self.active:
            self._begin(lag, queued, now)
        elif not share:
            self._end(now)
        else:
            self.set_overload(self.retry_after, share)

    def _begin(self, lag: float, queued: int, now: float) -> None:
        self.active = True
        self.episodes += 1
        self._since = now
        self._shed_at_start = self.shed()
        self.set_overload(self.retry_after, self.share)
        log.warning(
            "overload: %d KB wait in the receive queues (limit %d KB), the event loop is "
            "%.0f ms behind (limit %.0f ms); new INVITEs get 503 with Retry-After %d, as many "
            "as needed to keep up",
            queued // 1024,
            self.queue_limit // 1024,
            lag * 1000,
            self.threshold * 1000,
            self.retry_after,
        )

    def _end(self, now: float) -> None:
        self.active = False
        self.set_overload(None, 0.0)
        log.warning(
            "overload over after %.1f s: %d new INVITEs were answered 503",
            now - self._since,
            self.shed() - self._shed_at_start,
        )

    def metrics(self) -> Iterator[Metric]:
        yield gauge("sipdlg_overload_active", "1 while new INVITEs are shed (503)", self.active)
        yield gauge("sipdlg_overload_shed_share", "Share of new INVITEs shed now", self.share)
        yield counter("sipdlg_overload_episodes", "Times overload control started", self.episodes)
        yield counter(
            "sipdlg_overload_shed_invites", "New INVITEs answered 503 under overload", self.shed()
        )


def udp_backlog(inodes: Sequence[int], proc: Path = Path("/proc/net")) -> int:
    """The largest receive queue (bytes) among the UDP sockets with these inodes, read from
    ``/proc/net/udp`` and ``udp6`` (Linux; 0 where they cannot be read)."""
    wanted = {str(i) for i in inodes}
    largest = 0
    for name in ("udp", "udp6"):
        try:
            lines = (proc / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[9] in wanted:
                largest = max(largest, int(fields[4].partition(":")[2], 16))
    return largest


def inode_of(fd: int) -> int:
    return os.fstat(fd).st_ino

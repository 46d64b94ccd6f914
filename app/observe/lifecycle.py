"""Wires the dialog-lifecycle extras into a running :class:`app.sip.service.SipService`.

``Lifecycle(service)`` (made in ``SipService.__init__``) keeps the ended-call records
(``service.records``, fed from the engine's ``DialogEnded`` effects), the MI request counts
(``service.mi_requests``, bumped by ``app/mi/http.py``), the event bus and its webhooks, the
loop-lag monitor, and adds ``GET /events`` and ``GET /metrics`` to the MI application
(``extend_app``), behind the MI's auth, and ``GET /health`` (app/observe/health.py).
``start``/``stop`` run and end the background tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

from aiohttp import ClientSession, web

from engine.dialog import Dialog
from engine.dlg_records import Record, RecordRing, make_record
from engine.events import StateChanged

from .events import EventBus, Webhook, event_dict, sse_handler
from .health import health_handler
from .metrics import LoopLag, MetricSource, make_registry, metrics_handler

if TYPE_CHECKING:
    from ..sip.service import SipService

log = logging.getLogger("sipdlg.lifecycle")


class Lifecycle:
    def __init__(
        self,
        service: SipService,
        *,
        ended_records: int = 10000,
        webhooks: list[str] | None = None,
        event_queue: int = 1000,
        webhook_timeout: float = 5.0,
    ) -> None:
        self.service = service
        self.engine = service.engine
        self.records = RecordRing(ended_records)
        self.ended_by_reason: Counter[str] = Counter()
        self.records.subscribers.append(self._count_reason)
        self.mi_requests: Counter[tuple[str, str]] = Counter()
        self.bus = EventBus(event_queue, on_active=self.engine.report_states)
        self.engine.report_states(False)
        self.webhooks = [Webhook(self.bus, url, timeout=webhook_timeout) for url in webhooks or ()]
        self.lag = LoopLag()
        #: Subsystems that add their own families to ``/metrics`` (the store, the collector).
        self.metric_sources: list[MetricSource] = []
        self.registry = make_registry(self)
        self._session: ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def _count_reason(self, record: Record) -> None:
        self.ended_by_reason[record["end_reason"] or "none"] += 1

    # -- what the engine reports (SipService.dispatch_events) ----------------------------------

    def state_changed(self, event: StateChanged) -> None:
        if self.bus.active:
            self.bus.publish(event_dict(event.public()))

    def ended(self, dlg: Dialog) -> None:
        self.records.add(make_record(self.engine, dlg))

    # -- tasks ----------------------------------------------------------------------------------

    async def start(self) -> None:
        self.lag.start()
        if self.webhooks:
            self._session = ClientSession()
            loop = asyncio.get_running_loop()
            for hook in self.webhooks:
                self._tasks.append(loop.create_task(hook.run(self._session)))

    async def stop(self) -> None:
        self.bus.close()
        await self.lag.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- HTTP -----------------------------------------------------------------------------------

    def extend_app(self, app: web.Application) -> None:
        """Add ``GET /events`` (SSE), ``GET /metrics`` and ``GET /health`` to the MI app
        (before its catch-all)."""
        app.router.add_get("/events", sse_handler(self.bus))
        app.router.add_get("/metrics", metrics_handler(self.registry))
        app.router.add_get("/health", health_handler(self.service.readiness))

        async def close_streams(_: Any) -> None:
            for consumer in list(self.bus.consumers):
                if consumer.kind == "sse":
                    consumer.close()

        app.on_shutdown.append(close_streams)

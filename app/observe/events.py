"""Live dialog events for OSS/BSS: Server-Sent Events on ``GET /events`` and JSON webhooks.

Every state change the engine reports (its ``StateChanged`` effects, which
``SipService.dispatch_events`` hands to ``Lifecycle.state_changed``; OpenSIPS's
E_DLG_STATE_CHANGED) becomes one JSON object with the keys ``id``, ``db_id``, ``callid``,
``from_tag``, ``to_tag``, ``old_state``, ``new_state``, plus ``end_reason`` when ``new_state``
is 5.  It is serialized once and offered to every consumer:

* each consumer (one per SSE client, one per webhook URL) has its own bounded queue; offering
  never waits: when a consumer's queue is full the event is dropped *for that consumer only*
  and counted in its ``dropped``, so a slow or dead consumer cannot hold up SIP processing or
  anybody else's events;
* an SSE client gets ``data: {json}`` + a blank line per event (``: keepalive`` comments while
  idle); the route is added to the MI application, so the MI's auth applies;
* a webhook worker POSTs each event (``Content-Type: application/json``) in order, with a
  per-request timeout and bounded retries with exponential backoff; an event that still fails
  is given up and counted in ``failed``.

With no consumer the engine does not even build the events (``on_active``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, web

from engine.events import DialogStateChanged

log = logging.getLogger("sipdlg.events")

SSE_KEEPALIVE = 15.0
#: Retries after the first attempt, and the first backoff (doubled each time).
WEBHOOK_RETRIES = 3
WEBHOOK_BACKOFF = 0.5


def event_dict(ev: DialogStateChanged) -> dict[str, Any]:
    """The published object: E_DLG_STATE_CHANGED's keys, ``end_reason`` on state 5."""
    out: dict[str, Any] = {
        "id": ev.id,
        "db_id": ev.db_id,
        "callid": ev.callid,
        "from_tag": ev.from_tag,
        "to_tag": ev.to_tag,
        "old_state": ev.old_state,
        "new_state": ev.new_state,
    }
    if ev.new_state == 5:
        out["end_reason"] = ev.end_reason
    return out


class Consumer:
    """One receiver of events, with its own bounded queue and counters."""

    def __init__(self, name: str, kind: str, size: int) -> None:
        self.name = name
        self.kind = kind
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=size)
        self.delivered = 0
        self.dropped = 0
        self.failed = 0
        self.closed = False

    def offer(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            self.dropped += 1

    def close(self) -> None:
        """Wake the reader with the end marker (even past a full queue)."""
        self.closed = True
        while True:
            try:
                self.queue.put_nowait(None)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()
                self.dropped += 1


class EventBus:
    """Fans every dialog state change out to the consumers, never blocking the engine."""

    def __init__(self, queue_size: int, on_active: Callable[[bool], None] = lambda on: None):
        self.queue_size = queue_size
        #: Told when the first consumer comes and the last one goes (the engine then reports
        #: state changes, or stops building them).
        self.on_active = on_active
        self.consumers: list[Consumer] = []
        self.published = 0
        #: Counters of consumers that went away (SSE clients), kept for the metrics, by kind.
        self.gone: dict[str, list[int]] = {}

    def subscribe(self, name: str, kind: str) -> Consumer:
        consumer = Consumer(name, kind, self.queue_size)
        self.consumers.append(consumer)
        if len(self.consumers) == 1:
            self.on_active(True)
        return consumer

    @property
    def active(self) -> bool:
        return bool(self.consumers)

    def unsubscribe(self, consumer: Consumer) -> None:
        if consumer in self.consumers:
            self.consumers.remove(consumer)
            totals = self.gone.setdefault(consumer.kind, [0, 0, 0])
            totals[0] += consumer.delivered
            totals[1] += consumer.dropped
            totals[2] += consumer.failed
            if not self.consumers:
                self.on_active(False)

    def on_state_changed(self, ev: DialogStateChanged) -> None:
        self.publish(event_dict(ev))

    def publish(self, event: dict[str, Any]) -> None:
        data = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8", "backslashreplace"
        )
        self.published += 1
        for consumer in self.consumers:
            consumer.offer(data)

    def close(self) -> None:
        for consumer in list(self.consumers):
            consumer.close()

    def counts(self) -> dict[tuple[str, str], tuple[int, int, int]]:
        """(kind, name) -> (delivered, dropped, failed); SSE clients summed under "sse"."""
        out: dict[tuple[str, str], list[int]] = {}
        for kind, (d, x, f) in self.gone.items():
            if kind == "sse":
                out[(kind, kind)] = [d, x, f]
        for c in self.consumers:
            key = (c.kind, c.name if c.kind != "sse" else "sse")
            acc = out.setdefault(key, [0, 0, 0])
            acc[0] += c.delivered
            acc[1] += c.dropped
            acc[2] += c.failed
        return {k: (v[0], v[1], v[2]) for k, v in out.items()}


# --------------------------------------------------------------------------------------------
# Server-Sent Events
# --------------------------------------------------------------------------------------------


def sse_handler(bus: EventBus) -> Callable[[web.Request], Any]:
    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            },
        )
        consumer = bus.subscribe(f"sse:{request.remote}", "sse")
        try:
            await resp.prepare(request)
            await resp.write(b": sipdlg dialog events\n\n")
            queue = consumer.queue
            while True:
                try:
                    data = await asyncio.wait_for(queue.get(), SSE_KEEPALIVE)
                except TimeoutError:
                    await resp.write(b": keepalive\n\n")
                    continue
                if data is None:
                    break
                await resp.write(b"data: " + data + b"\n\n")
                consumer.delivered += 1
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            bus.unsubscribe(consumer)
        return resp

    return events


# --------------------------------------------------------------------------------------------
# Webhooks
# --------------------------------------------------------------------------------------------


class Webhook:
    """POSTs the events of one consumer to one URL, in order, with bounded retry."""

    def __init__(
        self,
        bus: EventBus,
        url: str,
        *,
        timeout: float = 5.0,
        retries: int = WEBHOOK_RETRIES,
        backoff: float = WEBHOOK_BACKOFF,
    ) -> None:
        self.url = url
        self.consumer = bus.subscribe(url, "webhook")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff

    async def run(self, session: ClientSession) -> None:
        queue = self.consumer.queue
        timeout = ClientTimeout(total=self.timeout)
        headers = {"Content-Type": "application/json"}
        while True:
            data = await queue.get()
            if data is None:
                return
            for attempt in range(self.retries + 1):
                if attempt:
                    await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
                try:
                    async with session.post(
                        self.url, data=data, headers=headers, timeout=timeout
                    ) as resp:
                        await resp.read()
                        if resp.status < 300:
                            self.consumer.delivered += 1
                            break
                        if 400 <= resp.status < 500 and resp.status not in (408, 429):
                            log.info("webhook %s refused an event: %s", self.url, resp.status)
                            self.consumer.failed += 1
                            break
                except (ClientError, TimeoutError, OSError) as exc:
                    log.debug("webhook %s attempt %d: %r", self.url, attempt + 1, exc)
            else:
                log.info("webhook %s: event given up after %d attempts", self.url, attempt + 1)
                self.consumer.failed += 1

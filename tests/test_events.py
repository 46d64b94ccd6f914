"""Live dialog events: an SSE client on ``GET /events`` and webhook receivers (real aiohttp
client and servers) see every transition of a call through ``sipdlg serve``, in order; a
webhook that hangs loses only its own events (counted) and never slows the call."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from helpers import SipdlgProcess, Sipp, free_port
from lifecycle_kit import http_get, mi

pytestmark = pytest.mark.sipp

TOKEN = "s3cret"


class Receiver:
    """A webhook endpoint: records JSON POSTs, or hangs on each until released."""

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.events: list[dict[str, Any]] = []
        self.release = asyncio.Event()
        self.port = free_port("tcp")
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, request: web.Request) -> web.Response:
        if self.hang:
            await self.release.wait()
            return web.Response(status=204)
        assert request.content_type == "application/json"
        self.events.append(await request.json())
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()


async def read_sse(
    session: aiohttp.ClientSession, url: str, out: list[dict[str, Any]], ready: asyncio.Event
) -> None:
    async with session.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        ready.set()
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))


async def wait_len(items: list[Any], n: int, timeout: float = 10) -> None:
    for _ in range(int(timeout / 0.05)):
        if len(items) >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"wanted {n} events, got {items}")


def check_call_events(events: list[dict[str, Any]], reason: str) -> None:
    """The five transitions of one call, in order."""
    assert [(e["old_state"], e["new_state"]) for e in events] == [
        (1, 1),
        (1, 2),
        (2, 3),
        (3, 4),
        (4, 5),
    ], events
    assert len({e["id"] for e in events}) == 1 and len({e["callid"] for e in events}) == 1
    keys = {"id", "db_id", "callid", "from_tag", "to_tag", "old_state", "new_state"}
    for e in events[:-1]:
        assert set(e) == keys
    assert set(events[-1]) == keys | {"end_reason"}
    assert events[-1]["end_reason"] == reason
    assert events[-1]["to_tag"] and events[0]["from_tag"]
    assert str(int(events[0]["db_id"])) == events[0]["db_id"]


async def test_sse_and_webhooks_see_every_transition_in_order(
    sipp: Callable[..., Sipp],
    sipp_uas: Callable[..., Sipp],
    sipdlg_server: Callable[..., SipdlgProcess],
) -> None:
    good, hung = Receiver(), Receiver(hang=True)
    await good.start()
    await hung.start()
    uas = sipp_uas("uas_answer")
    server = sipdlg_server(
        uas_port=uas.port,
        db="none",
        mi_token=TOKEN,
        webhook=[good.url, hung.url],
        webhook_timeout=1,
        event_queue=3,  # a call's first burst is 4 events: 1 being sent + 3 queued
    )
    events_url = f"http://{server.mi_listen}/events"
    # same auth as the MI
    assert http_get(server, "/events")[0] == 401
    sse: list[dict[str, Any]] = []
    ready = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as session:
            reader = asyncio.create_task(read_sse(session, events_url, sse, ready))
            await asyncio.wait_for(ready.wait(), 10)
            await asyncio.sleep(0.2)  # the subscription is in place once headers are out
            for _ in range(2):  # two calls, one after the other
                uac = sipp(
                    "uac_basic", remote=server.sip_address, calls=1, pause_ms=300, timeout=30
                )
                started = asyncio.get_running_loop().time()
                res = await asyncio.to_thread(uac.run)
                assert res.ok, res.describe()
                # a hanging webhook never slows a call down
                assert asyncio.get_running_loop().time() - started < 5
            await wait_len(sse, 10)
            await wait_len(good.events, 10)
            reader.cancel()
        for events in (sse[:5], sse[5:], good.events[:5], good.events[5:]):
            check_call_events(events, "Downstream BYE")
        assert sse == good.events
        status, text = await asyncio.to_thread(http_get, server, "/metrics", TOKEN)
        assert status == 200
        dropped = [
            line
            for line in text.splitlines()
            if line.startswith("sipdlg_events_dropped_total") and hung.url in line
        ]
        assert dropped and float(dropped[0].split()[-1]) >= 1, text
        good_dropped = [
            line
            for line in text.splitlines()
            if line.startswith("sipdlg_events_dropped_total") and f'"{good.url}"' in line
        ]
        assert float(good_dropped[0].split()[-1]) == 0
        assert mi(server, "dlg_list", token=TOKEN) == {"Dialogs": []}
    finally:
        await good.stop()
        await hung.stop()

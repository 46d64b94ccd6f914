"""``GET /health``: whether this sipdlg can take calls, for load balancers and Docker.

Ready (200) when the SIP sockets are bound and not shutting down, the MI answers (it is
the MI's HTTP server that answers this) and the dialog store is up: the SQLite file open
and, when commits run in a writer process, that process alive.  Otherwise 503, naming what
is not ready.  The body is small JSON with no version and nothing about calls, since the
path needs no token (app/mi/http.py ``OPEN_PATHS``; docs/operations.md says why).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

#: Values of a part that is ready: "ok", or "none" for a part not configured (``--db none``).
READY = frozenset({"ok", "none"})


def health_handler(
    readiness: Callable[[], dict[str, str]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler reporting ``{"status": ..., "sip": ..., "mi": ..., "store": ...}``;
    ``readiness`` gives each part's state ("ok", "none", or why it is not ready)."""

    async def health(request: web.Request) -> web.Response:
        parts = {"mi": "ok", **readiness()}
        ready = all(value in READY for value in parts.values())
        body = {"status": "ready" if ready else "not ready", **parts}
        return web.json_response(
            body, status=200 if ready else 503, headers={"Cache-Control": "no-store"}
        )

    return health

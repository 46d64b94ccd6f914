"""The tests' blocking MI client (``mi``, ``mi_raw``) and polling helpers, shared by every test
that talks to a real server."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

from helpers import SipdlgProcess

T = TypeVar("T")


def mi_raw(server: SipdlgProcess, method: str, params: Any = None, token: str | None = None) -> Any:
    """The whole JSON-RPC reply of one MI call."""
    doc: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": 1}
    if params is not None:
        doc["params"] = params
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(server.mi_url, json.dumps(doc).encode(), headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def mi(server: SipdlgProcess, method: str, params: Any = None, token: str | None = None) -> Any:
    """The ``result`` of one MI call; AssertionError on an error reply."""
    reply = mi_raw(server, method, params, token)
    assert "result" in reply, reply
    return reply["result"]


def http_get(server: SipdlgProcess, path: str, token: str | None = None) -> tuple[int, str]:
    assert server.mi_listen is not None
    req = urllib.request.Request(f"http://{server.mi_listen}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def wait_for(fn: Callable[[], T | None], timeout: float = 15.0, what: str = "") -> T:
    """Poll ``fn`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or fn}: last {last!r}")


def dialogs(server: SipdlgProcess) -> list[dict[str, Any]]:
    return mi(server, "dlg_list")["Dialogs"]  # type: ignore[no-any-return]


def ended(server: SipdlgProcess, **params: Any) -> dict[str, Any]:
    return mi(server, "dlg_list_ended", params or None)  # type: ignore[no-any-return]


def wait_ended(
    server: SipdlgProcess, count: int = 1, timeout: float = 15.0
) -> list[dict[str, Any]]:
    """Wait until ``count`` ended-call records exist; returns them newest first."""

    def got() -> list[dict[str, Any]] | None:
        recs = ended(server)["Dialogs"]
        return recs if len(recs) >= count else None

    return wait_for(got, timeout, f"{count} ended records")


def wait_state(server: SipdlgProcess, state: int, timeout: float = 15.0) -> dict[str, Any]:
    """Wait for exactly one dialog, in ``state``; returns it."""

    def got() -> dict[str, Any] | None:
        ds = dialogs(server)
        return ds[0] if len(ds) == 1 and ds[0]["state"] == state else None

    return wait_for(got, timeout, f"one dialog in state {state}")


def stat(server: SipdlgProcess, name: str) -> int:
    return mi(server, "get_statistics", {"statistics": [name]})[f"dialog:{name}"]  # type: ignore[no-any-return]

"""OpenSIPS-compatible MI: JSON-RPC 2.0 over HTTP (``POST /mi``), served by aiohttp.

The envelope is checked here with OpenSIPS's own rules and texts (mi_http: which errors
echo the id, float ids truncated, no batch), then the call is dispatched with jsonrpcserver to
the commands of ``app/mi/commands.py``, whose params are matched against the recipes of
``schemas.mi`` (OpenSIPS mi.c's parameter matching).  Replies are written by hand so the
bytes are OpenSIPS's: compact JSON, members ``jsonrpc``, ``result|error``, ``id``.  Where
OpenSIPS leaves a connection hanging (notification, empty body, GET, object id) we always
finish the HTTP answer.

Beyond OpenSIPS: optional Bearer/Basic token and CIDR allow-list, 415 for anything but
``application/json`` (no CORS-free "simple request" can reach the MI), 413 over ``max_body``.
``GET /health`` needs no token (probes hold no secrets; it tells nothing about calls) but
obeys the allow-list like every path.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import logging
import math
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from jsonrpcserver import JsonRpcError, Success
from jsonrpcserver.async_main import dispatch_to_response
from jsonrpcserver.result import Result
from oslash.either import Left  # type: ignore[import-untyped]

from schemas.mi import (
    COMMANDS,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    SERVER_ERROR,
    ParamsError,
)

from ..observe.ratelog import RateLimitedLog
from .commands import HANDLERS, DialogOps, MiError, RawResult
from .format import to_wire

log = logging.getLogger("sipdlg.mi")

JSON_CT = "application/json"
#: Paths served without the token: what load balancers and Docker's HEALTHCHECK probe.
OPEN_PATHS = frozenset({"/health"})
WRONG_PATH_BODY = b"<html><body>Unable to parse URL!</body></html>"
_SERVICE = web.AppKey("service", object)
_NO_ID = object()
_ID_NULL = None

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# --------------------------------------------------------------------------------------------
# Exposure policy
# --------------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost"; anything else counts as exposed."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_allow(allow: Sequence[str] | None) -> list[Network]:
    """CIDR strings to networks; ValueError names the bad entry."""
    nets: list[Network] = []
    for entry in allow or ():
        try:
            nets.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"--mi-allow: {entry!r} is not an IP address or CIDR") from None
    return nets


def check_mi_exposure(host: str, token: str | None, allow: Sequence[str] | None) -> None:
    """Refuse an MI reachable from the network without credentials or an allow-list.

    OpenSIPS's mi_http binds every interface with no authentication (opensips#2748, #2939):
    anyone who reaches the port can end calls.  Raises ValueError with what to do instead.
    """
    parse_allow(allow)
    if is_loopback(host) or token or allow:
        return
    raise ValueError(
        f"refusing to expose the MI on {host}: it can end any call. Bind it to loopback "
        "(--mi-listen 127.0.0.1:8888), or set --mi-token TOKEN and/or --mi-allow CIDR"
    )


# --------------------------------------------------------------------------------------------
# Reply writers
# --------------------------------------------------------------------------------------------


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _id_text(rid: Any) -> str:
    return "null" if rid is _NO_ID or rid is None else _dumps(rid)


def error_body(code: int, message: str, data: str | None, rid: Any) -> bytes:
    err = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return to_wire(f'{{"jsonrpc":"2.0","error":{_dumps(err)},"id":{_id_text(rid)}}}')


def _json_reply(body: bytes) -> web.Response:
    return web.Response(status=200, body=body, content_type=JSON_CT)


def _empty(status: int, **headers: str) -> web.Response:
    resp = web.Response(status=status, body=b"", headers=headers)
    resp.content_type = JSON_CT
    return resp


async def _write_result(request: web.Request, result: Any, rid: Any) -> web.StreamResponse:
    """Send ``{"jsonrpc":"2.0","result":...,"id":...}``; big listings go out piece by piece."""
    if not isinstance(result, RawResult):
        return _json_reply(
            to_wire(f'{{"jsonrpc":"2.0","result":{_dumps(result)},"id":{_id_text(rid)}}}')
        )
    head = b'{"jsonrpc":"2.0","result":'
    tail = to_wire(f',"id":{_id_text(rid)}}}')
    if len(result.chunks) == 1:
        return _json_reply(head + result.chunks[0] + tail)
    resp = web.StreamResponse(status=200)
    resp.content_type = JSON_CT
    resp.content_length = len(head) + len(result) + len(tail)
    await resp.prepare(request)
    await resp.write(head)
    for chunk in result.chunks:
        await resp.write(chunk)
    await resp.write(tail)
    await resp.write_eof()
    return resp


# --------------------------------------------------------------------------------------------
# JSON-RPC: envelope (OpenSIPS mi.c rules), then jsonrpcserver dispatch
# --------------------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _count(service: DialogOps, method: str, outcome: str) -> None:
    """MI calls by method and outcome, for ``/metrics``."""
    service.mi_requests[(method, outcome)] += 1


def _make_method(name: str) -> Callable[..., Awaitable[Result]]:
    """A jsonrpcserver method: match a recipe, validate, run the handler, map errors."""
    cmd = COMMANDS[name]
    handle = HANDLERS[name]

    async def method(service: DialogOps, /, *args: Any, **kwargs: Any) -> Result:
        try:
            _, params = cmd.match(list(args) if args or not kwargs else kwargs)
        except ParamsError as exc:
            _count(service, name, "bad_params")
            raise JsonRpcError(INVALID_PARAMS[0], INVALID_PARAMS[1], exc.data) from None
        try:
            result = await handle(service, params)
        except ParamsError as exc:  # a value the recipe's types admit but the command not
            _count(service, name, "bad_params")
            raise JsonRpcError(INVALID_PARAMS[0], INVALID_PARAMS[1], exc.data) from None
        except MiError as exc:
            _count(service, name, "error")
            raise JsonRpcError(exc.code, exc.message) from None
        except Exception:
            _count(service, name, "failed")
            log.exception("MI command %s failed", name)
            raise JsonRpcError(SERVER_ERROR[0], SERVER_ERROR[1], "Command handler failed") from None
        _count(service, name, "ok")
        return Success(result)  # type: ignore[no-any-return]

    method.__name__ = name
    return method


METHODS: dict[str, Callable[..., Awaitable[Result]]] = {n: _make_method(n) for n in COMMANDS}


def check_envelope(doc: Any) -> tuple[dict[str, Any] | None, Any, tuple[int, str] | None]:
    """OpenSIPS's request checks, in its order: (request for dispatch, id, error)."""
    if not isinstance(doc, dict):
        return None, _ID_NULL, INVALID_REQUEST
    rid: Any = doc.get("id", _NO_ID)
    if rid is not _NO_ID and rid is not None:
        if isinstance(rid, bool) or not isinstance(rid, int | float | str):
            # OpenSIPS answers an object id with a bare HTTP 500 and a hung connection.
            return None, _ID_NULL, INVALID_REQUEST
        if isinstance(rid, float):
            if not math.isfinite(rid):
                return None, _ID_NULL, INVALID_REQUEST
            rid = int(rid)  # OpenSIPS echoes numbers as integers: 1.5 -> 1
    if doc.get("jsonrpc") != "2.0":
        return None, rid, INVALID_REQUEST
    method = doc.get("method")
    if not isinstance(method, str):
        return None, rid, INVALID_REQUEST
    params = doc.get("params", [])
    if not isinstance(params, list | dict):
        return None, rid, INVALID_REQUEST
    request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if rid is not _NO_ID:
        request["id"] = rid
    return request, rid, None


async def rpc(request: web.Request, service: DialogOps, body: bytes) -> web.StreamResponse:
    """One JSON-RPC call: body bytes to HTTP reply."""
    try:
        doc = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return _json_reply(error_body(*PARSE_ERROR, None, _ID_NULL))
    envelope, rid, error = check_envelope(doc)
    if envelope is None:
        assert error is not None
        # Envelope errors are answered even for notifications, with id null then.
        return _json_reply(error_body(*error, None, rid))
    response = await dispatch_to_response(
        "", METHODS, context=service, deserializer=lambda _: envelope, validator=lambda d: d
    )
    if response is None:  # notification: the command ran, nothing to say
        return _empty(202)
    if isinstance(response, Left):
        err = response._error
        data = err.data if isinstance(err.data, str) else None
        if err.code == METHOD_NOT_FOUND[0]:
            data = None  # OpenSIPS gives no data for -32601
            _count(service, "<unknown>", "not_found")
        return _json_reply(error_body(err.code, err.message, data, rid))
    success: Any = response
    return await _write_result(request, success._value.result, rid)


# --------------------------------------------------------------------------------------------
# HTTP: guard (auth, allow-list), routing, transport rules
# --------------------------------------------------------------------------------------------


def _make_guard(token: str | None, nets: list[Network]) -> Any:
    token_b = token.encode() if token else None
    refusals = RateLimitedLog(log)  # one line per reason and second: a scan cannot flood

    def authorized(header: str) -> bool:
        scheme, _, cred = header.strip().partition(" ")
        scheme = scheme.lower()
        cred = cred.strip()
        assert token_b is not None
        if scheme == "bearer":
            return hmac.compare_digest(cred.encode(), token_b)
        if scheme == "basic":
            try:
                decoded = base64.b64decode(cred, validate=True)
            except (binascii.Error, ValueError):
                return False
            _, sep, password = decoded.partition(b":")
            return bool(sep) and hmac.compare_digest(password, token_b)
        return False

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        peer = request.remote or ""
        if nets:
            try:
                addr = ipaddress.ip_address(peer)
            except ValueError:
                addr = None
            if addr is None or not any(addr in net for net in nets):
                refusals.warning(
                    "allow",
                    "MI: refused %s %s from %s: not in --mi-allow",
                    request.method,
                    request.path,
                    peer,
                )
                return _empty(403)
        if token_b is not None and request.path not in OPEN_PATHS:
            header = request.headers.get("Authorization", "")
            if not header or not authorized(header):
                why = "bad credentials" if header else "no credentials"
                refusals.warning(
                    why, "MI: refused %s %s from %s: %s", request.method, request.path, peer, why
                )
                resp = _empty(401)
                resp.headers.add("WWW-Authenticate", 'Bearer realm="sipdlg-mi"')
                resp.headers.add("WWW-Authenticate", 'Basic realm="sipdlg-mi", charset="UTF-8"')
                return resp
        return await handler(request)

    return guard


def _unsupported_media_type(ctype: str) -> web.Response:
    """415 with a JSON-RPC error saying what to send: a bare 415 leaves a curl user guessing."""
    got = f"got {ctype!r}" if ctype else "no Content-Type was sent"
    data = f"the MI takes JSON-RPC with Content-Type: {JSON_CT} ({got})"
    body = error_body(*INVALID_REQUEST, data, _ID_NULL)
    return web.Response(status=415, body=body, content_type=JSON_CT)


def _is_mi_path(path: str) -> bool:
    """mi_http matches the first path segment: ``/mi`` and ``/mi/<anything>``."""
    return path == "/mi" or path.startswith("/mi/")


def create_mi_app(
    service: DialogOps,
    *,
    token: str | None = None,
    allow: list[str] | None = None,
    max_body: int = 1 << 20,
    extend: Callable[[web.Application], None] | None = None,
) -> web.Application:
    """The aiohttp application of the MI (one catch-all route, rules applied in order).

    ``extend`` may add routes of its own first (``GET /events``, ``GET /metrics``), behind
    the same auth.
    """
    nets = parse_allow(allow)
    app = web.Application(middlewares=[_make_guard(token or None, nets)], client_max_size=max_body)
    app[_SERVICE] = service

    async def entry(request: web.Request) -> web.StreamResponse:
        if not _is_mi_path(request.path):
            return web.Response(status=400, body=WRONG_PATH_BODY, content_type="text/html")
        if request.method != "POST":
            return _empty(405, Allow="POST")
        ctype = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if ctype != JSON_CT:
            return _unsupported_media_type(ctype)
        if request.content_length is not None and request.content_length > max_body:
            return _empty(413, Connection="close")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _empty(413, Connection="close")
        if not body:
            return _empty(400)
        return await rpc(request, service, body)

    if extend is not None:
        extend(app)
    app.router.add_route("*", "/{tail:.*}", entry)
    return app


async def start_mi(
    service: DialogOps,
    host: str,
    port: int,
    *,
    token: str | None = None,
    allow: list[str] | None = None,
    max_body: int = 1 << 20,
    extend: Callable[[web.Application], None] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> web.AppRunner:
    """Create, bind and start the MI (HTTPS with ``ssl_context``); the caller keeps the
    runner and calls ``cleanup()``."""
    app = create_mi_app(service, token=token, allow=allow, max_body=max_body, extend=extend)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host.strip("[]"), port, reuse_address=True, ssl_context=ssl_context)
    await site.start()
    scheme = "https" if ssl_context is not None else "http"
    log.info("MI listening on %s://%s:%d/mi", scheme, host, port)
    return runner

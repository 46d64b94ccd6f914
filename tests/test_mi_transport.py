"""HTTP and JSON-RPC envelope rules beyond the captured samples: auth, limits, odd ids, paging."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from helpers.mi_fake import FakeService
from test_mi_samples import check_dialog, raw_http

from app.mi.http import check_mi_exposure, create_mi_app
from engine.dialog import DlgState
from schemas.mi import COMMANDS


@pytest.fixture
async def mi() -> AsyncIterator[Any]:
    """Factory: (service, port) of an MI on a real port."""
    servers: list[TestServer] = []

    async def start(service: FakeService | None = None, **kw: Any) -> tuple[FakeService, int]:
        service = service or FakeService()
        srv = TestServer(create_mi_app(service, **kw), host="127.0.0.1")
        await srv.start_server()
        servers.append(srv)
        assert srv.port is not None
        return service, srv.port

    yield start
    for srv in servers:
        await srv.close()


async def post(port: int, doc: Any, **headers: str) -> Any:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    reply = await raw_http(port, "POST", "/mi", body, "application/json", headers)
    return reply


async def call(port: int, method: str, params: Any = None, rid: Any = 1) -> Any:
    doc: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": rid}
    if params is not None:
        doc["params"] = params
    reply = await post(port, doc)
    assert reply.status == 200
    return reply.json()


# ------------------------------------------------------------------------------ exposure


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"])
def test_loopback_needs_nothing(host: str) -> None:
    check_mi_exposure(host, None, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.10", "mi.example.com", ""])
def test_exposed_mi_refused_without_credentials(host: str) -> None:
    with pytest.raises(ValueError, match="--mi-token"):
        check_mi_exposure(host, None, None)
    with pytest.raises(ValueError):
        check_mi_exposure(host, "", [])
    check_mi_exposure(host, "s3cret", None)
    check_mi_exposure(host, None, ["10.0.0.0/8"])


def test_bad_allow_entry_named() -> None:
    with pytest.raises(ValueError, match="not-a-net"):
        check_mi_exposure("127.0.0.1", None, ["not-a-net"])


# ------------------------------------------------------------------------------ auth


async def test_token_bearer_and_basic(mi: Any, caplog: pytest.LogCaptureFixture) -> None:
    _, port = await mi(token="s3cret")
    doc = {"jsonrpc": "2.0", "method": "uptime", "id": 1}
    caplog.set_level(logging.WARNING, "sipdlg.mi")
    denied = await post(port, doc)
    assert denied.status == 401
    assert "Bearer" in denied.headers["www-authenticate"]
    assert "Basic" in denied.headers["www-authenticate"]
    assert denied.body == b""
    assert "no credentials" in caplog.text
    wrong = await post(port, doc, Authorization="Bearer nope")
    assert wrong.status == 401
    assert "bad credentials" in caplog.text
    ok = await post(port, doc, Authorization="Bearer s3cret")
    assert ok.status == 200 and "result" in ok.json()
    basic = base64.b64encode(b"anyone:s3cret").decode()
    assert (await post(port, doc, Authorization=f"Basic {basic}")).status == 200
    bad_basic = base64.b64encode(b"s3cret:wrong").decode()
    assert (await post(port, doc, Authorization=f"Basic {bad_basic}")).status == 401
    assert (await post(port, doc, Authorization="Basic ###")).status == 401
    # even the wrong path and GET need credentials first: nothing is revealed
    assert (await raw_http(port, "GET", "/mi", None, None)).status == 401


async def test_allow_list(mi: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "sipdlg.mi")
    _, port = await mi(allow=["10.0.0.0/8"])
    reply = await call_raw(port)
    assert reply.status == 403 and reply.body == b""
    assert "not in --mi-allow" in caplog.text
    _, port2 = await mi(allow=["10.0.0.0/8", "127.0.0.0/8"])
    assert (await call_raw(port2)).status == 200


async def call_raw(port: int) -> Any:
    return await post(port, {"jsonrpc": "2.0", "method": "uptime", "id": 1})


# ------------------------------------------------------------------------------ HTTP rules


async def test_body_limit(mi: Any) -> None:
    _, port = await mi(max_body=1000)
    small = {"jsonrpc": "2.0", "method": "uptime", "id": 1, "pad": "x" * 500}
    assert (await post(port, small)).status == 200
    big = {"jsonrpc": "2.0", "method": "uptime", "id": 1, "pad": "x" * 2000}
    reply = await post(port, big)
    assert reply.status == 413


async def test_chunked_body_over_limit(mi: Any) -> None:
    _, port = await mi(max_body=1000)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = b'{"jsonrpc":"2.0","method":"uptime","id":1,"p":"' + b"x" * 3000 + b'"}'
    writer.write(
        b"POST /mi HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        + f"{len(payload):x}\r\n".encode()
        + payload
        + b"\r\n0\r\n\r\n"
    )
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert data.startswith(b"HTTP/1.1 413")


@pytest.mark.parametrize(
    "ctype,status",
    [
        ("application/json", 200),
        ("application/json; charset=utf-8", 200),
        ("Application/JSON", 200),
        ("text/plain", 415),
        ("text/html", 415),
        ("text/xml", 415),
        ("application/x-www-form-urlencoded", 415),
        ("multipart/form-data; boundary=x", 415),
        (None, 415),
    ],
)
async def test_content_type(mi: Any, ctype: str | None, status: int) -> None:
    _, port = await mi()
    body = b'{"jsonrpc":"2.0","method":"uptime","id":1}'
    reply = await raw_http(port, "POST", "/mi", body, ctype)
    assert reply.status == status
    if status == 415:  # a body that says what to send instead
        error = json.loads(reply.body)["error"]
        assert error["code"] == -32600
        assert "Content-Type: application/json" in error["data"]
        assert (repr(ctype.split(";")[0].lower()) if ctype else "no Content-Type") in error["data"]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "OPTIONS", "PATCH"])
async def test_only_post_and_no_cors(mi: Any, method: str) -> None:
    _, port = await mi()
    reply = await raw_http(
        port,
        method,
        "/mi",
        None,
        None,
        {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert reply.status == 405
    assert reply.headers["allow"] == "POST"
    assert not any(h.startswith("access-control-") for h in reply.headers)


@pytest.mark.parametrize(
    "path,status",
    [
        ("/mi", 200),
        ("/mi/", 200),
        ("/mi/x/y", 200),
        ("/mi?a=1", 200),
        ("/", 400),
        ("/mix", 400),
        ("/MI", 400),
        ("/foo/mi", 400),
    ],
)
async def test_paths(mi: Any, path: str, status: int) -> None:
    _, port = await mi()
    body = b'{"jsonrpc":"2.0","method":"uptime","id":1}'
    reply = await raw_http(port, "POST", path, body, "application/json")
    assert reply.status == status


# ------------------------------------------------------------------------------ envelope

INVALID = b'{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request"},"id":null}'


@pytest.mark.parametrize(
    "body,expected",
    [
        (b'{"jsonrpc":"2.0","method":"uptime","id":[1]}', INVALID),
        (b'{"jsonrpc":"2.0","method":"uptime","id":true}', INVALID),
        (b"[]", INVALID),
        (b"5", INVALID),
        (b'"x"', INVALID),
        (b"null", INVALID),
        (
            b'{"jsonrpc":"2.0","method":"uptime","id":NaN}',
            b'{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}',
        ),
        (b'{"jsonrpc":"2.0","method":"uptime","id":1e999}', INVALID),
        (
            b"\xff\xfe{",
            b'{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}',
        ),
        (
            b"[" * 100000,
            b'{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}',
        ),
        # notification with a bad envelope: still answered, id null
        (b'{"jsonrpc":"1.0","method":"uptime"}', INVALID),
        (b'{"jsonrpc":"2.0","method":"uptime","params":5}', INVALID),
    ],
)
async def test_envelope_errors(mi: Any, body: bytes, expected: bytes) -> None:
    _, port = await mi()
    reply = await post(port, body)
    assert reply.status == 200
    assert reply.body == expected


@pytest.mark.parametrize(
    "rid,echo",
    [
        (7, b"7"),
        (-3, b"-3"),
        (1.5, b"1"),
        (-2.7, b"-2"),
        (2**40, b"1099511627776"),
        ("7", b'"7"'),
        ("é", '"é"'.encode()),
        (None, b"null"),
    ],
)
async def test_id_echo(mi: Any, rid: Any, echo: bytes) -> None:
    _, port = await mi()
    reply = await post(
        port, {"jsonrpc": "2.0", "method": "which", "params": {"command": "ps"}, "id": rid}
    )
    assert reply.body == b'{"jsonrpc":"2.0","result":[[]],"id":' + echo + b"}"


async def test_notifications_run_and_get_202(mi: Any) -> None:
    service, port = await mi()
    service.add_calls(2)
    did = next(iter(service.engine.dialogs)).did
    for doc in (
        {"jsonrpc": "2.0", "method": "dlg_end_dlg", "params": [did]},
        {"jsonrpc": "2.0", "method": "dlg_end_dlg", "params": []},  # -32602: still silent
        {"jsonrpc": "2.0", "method": "no_such"},
    ):
        reply = await post(port, doc)
        assert (reply.status, reply.body) == (202, b"")
    assert [d.did for d, _, _ in service.ended] == [did]


async def test_absent_or_empty_params_forms(mi: Any) -> None:
    _, port = await mi()
    params: Any
    for params in (None, [], {}):
        assert "result" in await call(port, "uptime", params)


async def test_kwarg_named_like_context(mi: Any) -> None:
    """A param called like the dispatcher's context argument is just a wrong name."""
    _, port = await mi()
    got = await call(port, "which", {"service": "x"})
    assert got["error"]["data"] == "Named parameters do not match"


async def test_engine_failure_is_500_operation_failed(mi: Any) -> None:
    service = FakeService(end_result=False)
    service.add_calls(1)
    _, port = await mi(service)
    dlg = next(iter(service.engine.dialogs))
    got = await call(port, "dlg_end_dlg", {"dialog_id": dlg.did})
    assert got["error"] == {"code": 500, "message": "Operation failed"}


async def test_engine_exception_is_500_not_traceback(mi: Any) -> None:
    class Broken(FakeService):
        async def end_dialog(self, *a: Any, **k: Any) -> bool:
            raise RuntimeError("boom")

    service = Broken()
    service.add_calls(1)
    _, port = await mi(service)
    got = await call(port, "dlg_end_dlg", [next(iter(service.engine.dialogs)).callid])
    assert got["error"] == {"code": 500, "message": "Operation failed"}


async def test_sync_end_dialog_supported(mi: Any) -> None:
    class Sync(FakeService):
        def end_dialog(self, *a: Any, **k: Any) -> bool:  # type: ignore[override]
            return True

    service = Sync()
    service.add_calls(1)
    _, port = await mi(service)
    got = await call(port, "dlg_end_dlg", [next(iter(service.engine.dialogs)).did])
    assert got["result"] == "OK"


# ------------------------------------------------------------------------------ dlg_list


async def test_pagination_edges(mi: Any) -> None:
    service, port = await mi()
    service.add_calls(7)
    full = (await call(port, "dlg_list"))["result"]["Dialogs"]
    ids = [d["ID"] for d in full]
    assert len(ids) == 7

    async def page(index: Any, counter: Any) -> Any:
        return (await call(port, "dlg_list", {"index": index, "counter": counter}))["result"]

    assert await page(0, 3) == {"count": 7, "Dialogs": full[:3]}
    assert await page("5", "10") == {"count": 7, "Dialogs": full[5:]}
    assert await page(7, 1) == {"count": 7, "Dialogs": []}
    assert await page(-1, 2) == {"count": 7, "Dialogs": []}
    assert await page(2, -1) == {"count": 7, "Dialogs": full[2:]}
    assert await page(3, 0) == {"Dialogs": full}
    assert await page(1.9, 1) == {"count": 7, "Dialogs": full[1:2]}
    # beyond 32 bits nothing wraps around to the first page
    assert await page(2**70, 2) == {"count": 7, "Dialogs": []}
    assert await page(2**32, 2) == {"count": 7, "Dialogs": []}
    assert await page(str(2**70), "2") == {"count": 7, "Dialogs": []}
    assert await page(1, 2**70) == {"count": 7, "Dialogs": full[1:]}
    # listing order is OpenSIPS's: bucket ascending
    entries = [int(i.split(".")[0][::-1], 16) for i in ids]
    assert entries == sorted(entries)


async def test_callid_lookups_skip_deleted(mi: Any) -> None:
    service, port = await mi()
    (dlg,) = service.add_calls(1)
    got = await call(port, "dlg_list", {"callid": dlg.callid, "from_tag": dlg.caller_tag})
    assert got["result"]["Dialog"]["ID"] == dlg.did
    dlg.state = DlgState.DELETED
    got = await call(port, "dlg_list", {"callid": dlg.callid})
    assert got["error"] == {"code": 404, "message": "No such dialog"}
    got = await call(port, "dlg_end_dlg", [dlg.did])
    assert got["error"] == {"code": 404, "message": "Requested Dialog not found"}
    # deleted dialogs are still listed (delete_delay) with state 5
    listed = (await call(port, "dlg_list"))["result"]["Dialogs"]
    assert [d["state"] for d in listed] == [5]


async def test_early_and_unconfirmed_dialog_objects(mi: Any) -> None:
    service, port = await mi()
    service.add_calls(1, state=DlgState.UNCONFIRMED)
    service.add_calls(1, state=DlgState.EARLY)
    for d in (await call(port, "dlg_list_ctx"))["result"]["Dialogs"]:
        check_dialog(d, ctx=True)
        assert d["timestart"] == 0 and "datestart" not in d and "dateout" not in d
        assert d["context"] == {}
    states = sorted(d["state"] for d in (await call(port, "dlg_list"))["result"]["Dialogs"])
    assert states == [1, 2]


async def test_dialog_strings_escaped_and_optional_keys(mi: Any) -> None:
    service, port = await mi()
    (dlg,) = service.add_calls(1)
    dlg.from_uri = 'sip:"quote"\\back\x01ctl@é.example'
    dlg.caller_contact = "sip:bad\udcffbyte@h"  # undecodable SIP byte kept by surrogateescape
    dlg.caller_route_set = ("sip:p1.example;lr", "<sip:p2.example;lr>")
    dlg.caller_sent_sdp = "v=0\r\n"
    dlg.callees[0].sent_sdp = "v=0\r\n"
    dlg.callees[0].socket = None
    dlg.user_flags = "flag_a flag_b"
    reply = await post(port, {"jsonrpc": "2.0", "method": "dlg_list", "id": 1})
    obj = reply.json()["result"]["Dialogs"][0]
    check_dialog(obj)
    assert obj["from_uri"] == dlg.from_uri
    assert obj["caller_contact"] == "sip:bad\udcffbyte@h"
    assert obj["caller_route_set"] == "<sip:p1.example;lr>,<sip:p2.example;lr>"
    assert obj["caller_sent_sdp"] == "v=0\r\n"
    assert obj["CALLEES"][0]["callee_sent_sdp"] == "v=0\r\n"
    assert obj["CALLEES"][0]["callee_bind_addr"] is None
    assert obj["user_flags"] == "flag_a flag_b"
    assert obj["datestart"] == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(dlg.timestart))
    assert obj["dateout"] == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(dlg.timeout))


# ------------------------------------------------------------------------------ other commands


async def test_statistics_commands(mi: Any) -> None:
    service, port = await mi()
    service.add_calls(2)
    st = service.engine.stats
    st.failed_dialogs = 4  # type: ignore[attr-defined]
    st.rcv_requests = 9  # type: ignore[attr-defined]
    got = (await call(port, "get_statistics", [["dialog:", "rcv_requests"]]))["result"]
    assert got["dialog:active_dialogs"] == 2 and got["dialog:failed_dialogs"] == 4
    assert got["core:rcv_requests"] == 9
    assert (await call(port, "get_statistics", {"statistics": ["core:rcv_requests"]}))[
        "result"
    ] == {}
    kinds = (await call(port, "list_statistics"))["result"]
    assert kinds["dialog:active_dialogs"] == "non-incremental"
    assert kinds["dialog:failed_dialogs"] == "incremental"
    assert (
        await call(port, "reset_statistics", {"statistics": ["failed_dialogs", "active_dialogs"]})
    )["result"] == "OK"
    got = (await call(port, "get_statistics", [["dialog:"]]))["result"]
    assert got["dialog:failed_dialogs"] == 0 and got["dialog:active_dialogs"] == 2
    nf = await call(port, "reset_statistics", [["nosuch"]])
    assert nf["error"] == {"code": 404, "message": "Statistics Not Found"}
    assert (await call(port, "reset_all_statistics"))["result"] == "OK"
    assert (await call(port, "get_statistics", [["rcv_requests"]]))["result"] == {
        "core:rcv_requests": 0
    }
    empty = await call(port, "get_statistics", {"statistics": []})
    assert empty["error"]["data"] == "Empty array in parameter 'statistics'"
    item = await call(port, "get_statistics", {"statistics": [1]})
    assert item["error"]["data"] == "Bad type for array item in parameter 'statistics'"


async def test_which_help_version_ps(mi: Any) -> None:
    _, port = await mi()
    assert (await call(port, "which", {"command": "nosuch"}))["error"] == {
        "code": 404,
        "message": "unknown MI command",
    }
    assert (await call(port, "help"))[
        "result"
    ] == "Usage: help mi_cmd - returns information about 'mi_cmd'"
    assert (await call(port, "help", {"mi_cmd": "uptime"}))["result"]["Exported by"] == "core"
    assert (await call(port, "help", ["nosuch"]))["error"]["code"] == 404
    assert (await call(port, "version"))["result"]["Server"].startswith("sipdlg (0.1.0 (")
    assert set((await call(port, "version", ["1"]))["result"]) == {"Server", "git"}
    procs = (await call(port, "ps"))["result"]["Processes"]
    assert procs[0]["ID"] == 0 and isinstance(procs[0]["PID"], int)
    up = (await call(port, "uptime"))["result"]
    assert list(up) == ["Now", "Up since", "Up time"]


async def test_which_lists_every_command_and_help_answers_each(mi: Any) -> None:
    _, port = await mi()
    names = (await call(port, "which"))["result"]
    assert names == list(COMMANDS)
    for name in names:
        got = (await call(port, "help", {"mi_cmd": name}))["result"]
        assert got["Exported by"] == COMMANDS[name].module
        # OpenSIPS's own words where it has them ("not available" for dlg_end_dlg, as it
        # answers); ours for every command beyond OpenSIPS.
        if COMMANDS[name].help is None:
            assert got["Help"] == "not available for this command"
        else:
            assert got["Help"] == COMMANDS[name].help


async def test_log_level_reads_and_sets_the_level_at_run_time(mi: Any) -> None:
    _, port = await mi()
    root = logging.getLogger()
    before = root.level
    try:
        root.setLevel(logging.INFO)
        (proc,) = (await call(port, "log_level"))["result"]["Processes"]
        assert proc == {"PID": os.getpid(), "Log level": 3, "Type": "sipdlg"}
        assert (await call(port, "log_level", {"level": "4"}))["result"] == {
            "New global log level": 4
        }
        assert root.level == logging.DEBUG
        assert (await call(port, "log_level", [1, os.getpid()]))["result"] == {"Log level": 1}
        assert root.level == logging.WARNING
        bad = (await call(port, "log_level", {"level": 3, "pid": 1}))["error"]
        assert bad == {"code": -32602, "message": "Invalid params", "data": "Bad PID"}
        assert root.level == logging.WARNING
    finally:
        root.setLevel(before)

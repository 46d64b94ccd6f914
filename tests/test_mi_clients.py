"""Real MI clients against our MI: opensips-cli, python-opensips, ``sipdlg mi``; the schema."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from helpers.mi_fake import FakeService

from app.mi import client as mi_client
from app.mi.http import create_mi_app
from schemas import COMMANDS, mi_json_schema

BIN = Path(sys.executable).parent


@pytest.fixture
async def mi_url() -> AsyncIterator[tuple[FakeService, str]]:
    service = FakeService()
    service.add_calls(3)
    srv = TestServer(create_mi_app(service), host="127.0.0.1")
    await srv.start_server()
    yield service, f"http://127.0.0.1:{srv.port}/mi"
    await srv.close()


async def run(*argv: str) -> tuple[int, str, str]:
    """A subprocess, awaited so that the MI in this event loop keeps serving."""
    env = {**os.environ, "HOME": os.environ.get("TMPDIR", "/tmp")}
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def opensips_cli() -> str:
    path = shutil.which("opensips-cli", path=str(BIN)) or shutil.which("opensips-cli")
    if path is None:
        pytest.skip("opensips-cli not installed")
    return path


async def test_opensips_cli(mi_url: tuple[FakeService, str]) -> None:
    service, url = mi_url
    cli = opensips_cli()
    base = [cli, "-o", "communication_type=http", "-o", f"url={url}", "-x", "mi"]
    rc, out, err = await run(*base, "dlg_list")
    assert rc == 0, err
    dialogs = json.loads(out)["Dialogs"]
    assert len(dialogs) == 3
    first = dialogs[0]
    rc, out, _ = await run(*base, "dlg_list", f"callid={first['callid']}")
    assert json.loads(out)["Dialog"]["ID"] == first["ID"]
    rc, out, _ = await run(*base, "dlg_list", "index=1", "counter=1")
    assert json.loads(out) == {"count": 3, "Dialogs": [dialogs[1]]}
    rc, out, _ = await run(*base, "get_statistics", "dialog:")
    assert json.loads(out)["dialog:active_dialogs"] == 3
    rc, out, err = await run(*base, "dlg_end_dlg", first["ID"])
    assert rc == 0, err
    assert json.loads(out) == "OK"
    rc, out, err = await run(*base, "dlg_end_dlg", dialogs[1]["callid"], "X-Cli: 1")
    assert json.loads(out) == "OK"
    assert [(d.did, extra) for d, _, extra in service.ended] == [
        (first["ID"], ""),
        (dialogs[1]["ID"], "X-Cli: 1"),
    ]
    rc, out, err = await run(*base, "dlg_end_dlg", first["ID"])
    assert "404" in out + err and "Requested Dialog not found" in out + err


async def test_python_opensips(mi_url: tuple[FakeService, str]) -> None:
    from opensips.mi import OpenSIPSMI, OpenSIPSMIException

    service, url = mi_url
    client = OpenSIPSMI("http", url=url)
    dialogs = (await asyncio.to_thread(client.execute, "dlg_list", {}))["Dialogs"]
    assert len(dialogs) == 3
    one = await asyncio.to_thread(client.execute, "dlg_list", {"callid": dialogs[2]["callid"]})
    assert one["Dialog"] == dialogs[2]
    assert await asyncio.to_thread(client.execute, "dlg_end_dlg", [dialogs[2]["ID"]]) == "OK"
    with pytest.raises(OpenSIPSMIException, match="Requested Dialog not found"):
        await asyncio.to_thread(client.execute, "dlg_end_dlg", [dialogs[2]["ID"]])
    with pytest.raises(OpenSIPSMIException, match="Command only supports named parameters"):
        await asyncio.to_thread(client.execute, "dlg_list", ["x"])
    which = await asyncio.to_thread(client.execute, "which", {})
    assert which == list(COMMANDS)


async def test_curl(mi_url: tuple[FakeService, str]) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    _, url = mi_url
    body = '{"jsonrpc":"2.0","method":"dlg_list","params":{"index":0,"counter":2},"id":1}'
    rc, out, _ = await run(
        "curl",
        "-sS",
        "-m",
        "5",
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
        url,
    )
    assert rc == 0
    reply = json.loads(out)
    assert reply["result"]["count"] == 3 and len(reply["result"]["Dialogs"]) == 2
    # plain curl -d (form content type) is refused, and the answer is complete (no hang)
    rc, out, _ = await run(
        "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", "-d", body, url
    )
    assert (rc, out) == (0, "415")


# ------------------------------------------------------------------------------ sipdlg mi


@pytest.mark.parametrize(
    "method,args,params",
    [
        ("dlg_list", [], []),
        ("dlg_list", ["callid=abc@h"], {"callid": "abc@h"}),
        ("dlg_list", ["callid=abc@h", "from_tag=xyz"], {"callid": "abc@h", "from_tag": "xyz"}),
        ("dlg_list", ["index=40", "counter=10"], {"index": "40", "counter": "10"}),
        ("dlg_list", ["abc@h"], ["abc@h"]),
        ("dlg_end_dlg", ["baa.2d206994"], ["baa.2d206994"]),
        (
            "dlg_end_dlg",
            ["dialog_id=baa.2d206994", "extra_hdrs=X: 1"],
            {"dialog_id": "baa.2d206994", "extra_hdrs": "X: 1"},
        ),
        ("dlg_end_dlg", ["a@b", "X-A: 1"], ["a@b", "X-A: 1"]),
        ("get_statistics", ["dialog:", "tm:"], [["dialog:", "tm:"]]),
        ("get_statistics", ["statistics=dialog: tm:"], {"statistics": ["dialog:", "tm:"]}),
        ("list_statistics", [], []),
    ],
)
def test_client_param_mapping(method: str, args: list[str], params: Any) -> None:
    assert mi_client.build_params(method, args) == params


def test_client_json_modifier() -> None:
    assert mi_client.build_params("dlg_list", ["index=0", "counter=2"], as_json=True) == {
        "index": 0,
        "counter": 2,
    }
    assert mi_client.build_params("get_statistics", ['["dialog:"]'], as_json=True) == [["dialog:"]]


async def test_sipdlg_mi_command(mi_url: tuple[FakeService, str]) -> None:
    _, url = mi_url
    rc, out, err = await run(
        sys.executable, "-m", "app.mi.client", "--url", url, "dlg_list", "index=0", "counter=1"
    )
    assert rc == 0, err
    assert json.loads(out)["count"] == 3
    rc, out, err = await run(sys.executable, "-m", "app.mi.client", "--url", url, "dlg_list", "x")
    assert rc == 1
    assert err.strip() == "error: -32602: Invalid params (Command only supports named parameters)"
    rc, _, err = await run(
        sys.executable, "-m", "app.mi.client", "--url", "http://127.0.0.1:1/mi", "uptime"
    )
    assert rc == 1 and "cannot reach" in err


async def test_sipdlg_mi_token() -> None:
    srv = TestServer(create_mi_app(FakeService(), token="t0k"), host="127.0.0.1")
    await srv.start_server()
    try:
        url = f"http://127.0.0.1:{srv.port}/mi"
        rc, _, err = await run(sys.executable, "-m", "app.mi.client", "--url", url, "uptime")
        assert rc == 1 and "HTTP 401" in err
        rc, out, err = await run(
            sys.executable, "-m", "app.mi.client", "--url", url, "--token", "t0k", "uptime"
        )
        assert rc == 0, err
        assert "Up time" in json.loads(out)
    finally:
        await srv.close()


# ------------------------------------------------------------------------------ schema


def test_json_schema_is_valid_and_complete() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = mi_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert set(schema["x-mi-commands"]) == set(COMMANDS)
    assert schema["x-mi-commands"]["dlg_list"]["recipes"] == [
        [],
        ["callid"],
        ["callid", "from_tag"],
        ["index", "counter"],
    ]
    validator = jsonschema.Draft202012Validator(schema)
    good = [
        {"jsonrpc": "2.0", "method": "dlg_list", "params": {"index": "0", "counter": 2}, "id": 1},
        {"jsonrpc": "2.0", "method": "dlg_end_dlg", "params": ["a.b", "X: 1\r\n"], "id": "1"},
        {"jsonrpc": "2.0", "method": "get_statistics", "params": [["dialog:"]], "id": None},
        {"jsonrpc": "2.0", "method": "uptime"},
    ]
    for doc in good:
        validator.validate(doc)
    bad = [
        {"jsonrpc": "2.0", "method": "dlg_list", "params": ["abc"], "id": 1},
        {"jsonrpc": "2.0", "method": "dlg_end_dlg", "params": {"id": "x"}, "id": 1},
        {"jsonrpc": "2.0", "method": "get_statistics", "params": ["dialog:"], "id": 1},
        {"jsonrpc": "2.0", "method": "no_such", "id": 1},
    ]
    for doc in bad:
        assert not validator.is_valid(doc), doc


async def test_sipdlg_mi_schema_cli() -> None:
    rc, out, err = await run(
        sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main(['mi-schema']))"
    )
    assert rc == 0, err
    assert json.loads(out) == json.loads(json.dumps(mi_json_schema()))

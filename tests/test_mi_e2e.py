"""The MI of a real ``sipdlg serve`` with SIPp calls through it: the samples that need live
dialogs (01-13, 64-65, 80-95), the BYEs/CANCELs on the wire, and real clients.

Topology as in the captures: SIPp UAC -> sipdlg -> SIPp UAS, MI on a loopback port.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import SipdlgProcess, SipMessage, Sipp
from test_mi_samples import assert_same_reply, check_dialog, load, raw_http

pytestmark = pytest.mark.sipp


class LiveMI:
    """Replays captured requests on a live sipdlg, rewriting the capture's ids to ours."""

    def __init__(self, server: SipdlgProcess) -> None:
        assert server.mi_port is not None
        self.port = server.mi_port
        self.rewrites: dict[str, str] = {}

    async def call(self, method: str, params: Any = None) -> Any:
        doc: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": 1}
        if params is not None:
            doc["params"] = params
        reply = await raw_http(
            self.port, "POST", "/mi", json.dumps(doc).encode(), "application/json"
        )
        assert reply.status == 200
        return reply.json()

    async def dialogs(self) -> list[dict[str, Any]]:
        return (await self.call("dlg_list"))["result"]["Dialogs"]  # type: ignore[no-any-return]

    async def wait_dialogs(
        self, count: int, state: int, timeout: float = 15
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            dialogs = await self.dialogs()
            if len(dialogs) == count and all(d["state"] == state for d in dialogs):
                return dialogs
            if time.monotonic() > deadline:
                raise AssertionError(f"wanted {count} dialogs in state {state}, have {dialogs}")
            await asyncio.sleep(0.1)

    def learn(self, sample: int, ours: list[dict[str, Any]]) -> None:
        """Map the capture's IDs, Call-IDs and tags to ours (call N <-> call N)."""
        theirs = load(sample)["response"]["result"]["Dialogs"]
        by_number = {d["callid"].split("-")[0]: d for d in ours}
        for t in theirs:
            o = by_number[t["callid"].split("-")[0]]
            self.rewrites[t["ID"]] = o["ID"]
            self.rewrites[t["callid"]] = o["callid"]
            self.rewrites[t["caller_tag"]] = o["caller_tag"]

    async def replay(self, number: int) -> Any:
        sample = load(number)
        raw = sample["request_raw"]
        for theirs, ours in self.rewrites.items():
            raw = raw.replace(theirs, ours)
        reply = await raw_http(self.port, "POST", "/mi", raw.encode(), "application/json")
        assert_same_reply(reply, sample, number, live=True)
        return reply.json()


def bye_headers(msg: SipMessage) -> dict[str, Any]:
    return {
        "method": msg.method,
        "cseq": msg.cseq,
        "max_forwards": msg.header("Max-Forwards"),
        "content_length": msg.header("Content-Length"),
        "reason": msg.header("Reason"),
        "vias": len(msg.header_values("Via")),
    }


def _uac_pair(
    sipp: Callable[..., Sipp],
    sipp_uas: Callable[..., Sipp],
    sipdlg_server: Callable[..., SipdlgProcess],
    uac_scenario: str,
    uas_scenario: str,
    calls: int,
) -> tuple[Sipp, Sipp, SipdlgProcess]:
    uas = sipp_uas(uas_scenario)
    server = sipdlg_server(uas_port=uas.port)
    uac = sipp(uac_scenario, remote=server.sip_address, calls=calls, rate=10, timeout=60)
    uac.start()
    return uac, uas, server


async def test_confirmed_calls_samples_and_byes(
    sipp: Callable[..., Sipp],
    sipp_uas: Callable[..., Sipp],
    sipdlg_server: Callable[..., SipdlgProcess],
) -> None:
    uac, uas, server = _uac_pair(sipp, sipp_uas, sipdlg_server, "uac_wait_bye", "uas_answer", 3)
    mi = LiveMI(server)
    ours = await mi.wait_dialogs(3, 4)
    for d in ours:
        check_dialog(d)
    mi.learn(1, ours)
    for number in range(1, 13):
        await mi.replay(number)
    for number in (20, 21, 22, 23, 24, 25, 26, 29, 30, 31, 32, 64, 65, 67, 72):
        await mi.replay(number)

    # 80: end call 1 by ID (named); both parties get a BYE as OpenSIPS sends it
    assert (await mi.replay(80))["result"] == "OK"
    await mi.replay(81)
    await mi.replay(83)
    # 84: call 2 by ID (positional); 85: call 3 by Call-ID with extra headers
    assert (await mi.replay(84))["result"] == "OK"
    assert (await mi.replay(85))["result"] == "OK"

    res = uac.wait(30)
    assert res.ok, res.describe()
    byes_caller = [m for m in uac.received() if m.method == "BYE"]
    byes_callee = uas.wait_received(method="BYE", count=3)
    assert len(byes_caller) == 3 and len(byes_callee) == 3
    for msg in byes_caller:
        assert bye_headers(msg) | {"reason": None} == {
            "method": "BYE",
            "cseq": (1, "BYE"),
            "max_forwards": "70",
            "content_length": "0",
            "reason": None,
            "vias": 1,
        }
    for msg in byes_callee:
        assert msg.cseq == (2, "BYE")
        assert msg.header("Max-Forwards") == "70"
    extra = [m for m in byes_caller + byes_callee if m.header("X-Test") == "foo"]
    assert len(extra) == 2
    assert all(m.header("Reason") == 'Q.850;cause=16;text="MI Termination"' for m in extra)
    assert not [
        m for m in byes_caller + byes_callee if m.header("X-Test") is None and m.header("Reason")
    ]

    # after: nothing listed, counters agree
    assert await mi.dialogs() == []
    stats = (await mi.call("get_statistics", [["dialog:"]]))["result"]
    assert stats["dialog:active_dialogs"] == 0
    assert stats["dialog:processed_dialogs"] == 3
    assert stats["dialog:early_dialogs"] == 0


async def test_early_dialogs_cancelled(
    sipp: Callable[..., Sipp],
    sipp_uas: Callable[..., Sipp],
    sipdlg_server: Callable[..., SipdlgProcess],
) -> None:
    uac, uas, server = _uac_pair(
        sipp, sipp_uas, sipdlg_server, "uac_wait_487", "uas_early_cancel", 2
    )
    mi = LiveMI(server)
    ours = await mi.wait_dialogs(2, 2)
    mi.learn(90, ours)
    await mi.replay(90)
    stats = (await mi.call("get_statistics", [["dialog:"]]))["result"]
    assert stats["dialog:early_dialogs"] == 2 and stats["dialog:active_dialogs"] == 0
    assert (await mi.replay(92))["result"] == "OK"
    assert (await mi.replay(94))["result"] == "OK"
    res = uac.wait(30)
    assert res.ok, res.describe()
    cancels = uas.wait_received(method="CANCEL", count=2)
    assert len(cancels) == 2
    assert all(m.header("X-Early") is None for m in cancels)  # extra_hdrs never go on a CANCEL
    assert all(m.cseq == (1, "CANCEL") for m in cancels)
    assert [m.status for m in uac.received() if m.status == 487] == [487, 487]
    deadline = time.monotonic() + 10
    while await mi.dialogs() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    stats = (await mi.call("get_statistics", [["dialog:"]]))["result"]
    assert stats["dialog:early_dialogs"] == 0
    assert stats["dialog:failed_dialogs"] == 2
    assert stats["dialog:processed_dialogs"] == 2


async def _run(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HOME": os.environ.get("TMPDIR", "/tmp")},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_real_clients_against_live_server(
    sipp: Callable[..., Sipp],
    sipp_uas: Callable[..., Sipp],
    sipdlg_server: Callable[..., SipdlgProcess],
) -> None:
    cli = shutil.which("opensips-cli", path=str(Path(sys.executable).parent)) or shutil.which(
        "opensips-cli"
    )
    if cli is None:
        pytest.skip("opensips-cli not installed")
    from opensips.mi import OpenSIPSMI

    uac, uas, server = _uac_pair(sipp, sipp_uas, sipdlg_server, "uac_wait_bye", "uas_answer", 2)
    mi = LiveMI(server)
    await mi.wait_dialogs(2, 4)
    base = [cli, "-o", "communication_type=http", "-o", f"url={server.mi_url}", "-x", "mi"]
    rc, out, err = await _run(*base, "dlg_list")
    assert rc == 0, err
    dialogs = json.loads(out)["Dialogs"]
    assert len(dialogs) == 2
    rc, out, err = await _run(*base, "dlg_end_dlg", dialogs[0]["ID"])
    assert (rc, json.loads(out)) == (0, "OK"), err
    client = OpenSIPSMI("http", url=server.mi_url)
    one = await asyncio.to_thread(client.execute, "dlg_list", {"callid": dialogs[1]["callid"]})
    assert one["Dialog"]["ID"] == dialogs[1]["ID"]
    assert await asyncio.to_thread(client.execute, "dlg_end_dlg", [dialogs[1]["callid"]]) == "OK"
    rc, out, err = await _run(
        sys.executable, "-m", "app.mi.client", "--url", server.mi_url, "get_statistics", "dialog:"
    )
    assert rc == 0, err
    assert json.loads(out)["dialog:processed_dialogs"] == 2
    res = uac.wait(30)
    assert res.ok, res.describe()
    assert len([m for m in uac.received() if m.method == "BYE"]) == 2
    assert len(uas.wait_received(method="BYE", count=2)) == 2

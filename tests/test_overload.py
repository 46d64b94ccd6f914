"""Overload control: under overload new INVITEs get 503 with Retry-After at once, statelessly,
while what is established goes on (the engine's shedding, the lag detector, and a real server
whose event loop is blocked)."""

from __future__ import annotations

import logging
import signal
import socket
import time
from collections.abc import Callable

import pytest
from helpers import LOOPBACK, SipdlgProcess, Sipp
from lifecycle_kit import http_get, wait_state
from test_engine_kit import CALLEE, Call, Rig, one, pick

from app.sip.overload import OverloadControl, inode_of, udp_backlog


def test_new_invites_get_503_with_retry_after_and_nothing_else_happens() -> None:
    rig = Rig()
    up = Call(1)
    _, ok = rig.call_up(up)
    ringing = Call(2)
    inv2 = one(rig.recv(ringing.invite()), method="INVITE")
    rig.eng.set_overload(3, rig.now)
    outs = rig.recv(Call(3).invite())
    (shed,) = outs
    assert shed.status == 503 and shed.msg.header("retry-after") == "3"
    assert len(rig.eng.dialogs) == 2 and rig.eng.stats.shed_invites == 1
    # A retransmission of an INVITE taken before the overload is absorbed by its transaction.
    assert not pick(rig.recv(ringing.invite()), status=503)
    # What is established goes on: a response, an in-dialog request, its answer.
    assert one(rig.recv(ringing.reply(inv2, 180, "Ringing"), src=CALLEE), status=180)
    bye = one(rig.recv(up.in_dialog("BYE", ok)), method="BYE")
    assert one(rig.recv(up.answer_request(bye), src=CALLEE), status=200)
    rig.eng.set_overload(None, rig.now)
    assert one(rig.recv(Call(4).invite()), method="INVITE")


def test_detector_sheds_in_proportion_and_lets_calls_back_in_gradually(
    caplog: pytest.LogCaptureFixture,
) -> None:
    verdicts: list[tuple[int | None, float]] = []
    control = OverloadControl(
        None,  # type: ignore[arg-type]  # observe() needs no loop
        lambda retry, share: verdicts.append((retry, share)),
        lambda: 7,
        lag_ms=100,
        queue_kb=100,
        recover=2.0,
        retry_after=4,
    )
    caplog.set_level(logging.WARNING, "sipdlg.overload")
    control.observe(0.01, 0.0)
    assert not verdicts  # under the limits: nothing
    control.observe(0.0, 0.05, queued=150 * 1024)  # 1.5 times the queue limit
    assert verdicts == [(4, pytest.approx(0.15))] and control.active
    control.observe(0.0, 0.10, queued=80 * 1024)  # between half and the limit: hold
    assert len(verdicts) == 1
    control.observe(1.5, 0.15)  # the loop blocked for 15 times the lag limit: everything
    assert verdicts[-1] == (4, 1.0)
    t = 0.2
    while control.active and t < 10:
        control.observe(0.0, t)
        t += 0.05
    assert 1.9 <= t - 0.2 <= 2.1  # from everything to nothing in overload_recover seconds
    shares = [share for _, share in verdicts[2:-1]]
    assert shares == sorted(shares, reverse=True) and verdicts[-1] == (None, 0.0)
    messages = [r.message for r in caplog.records]
    assert len(messages) == 2 and messages[0].startswith("overload: 150 KB wait")
    assert messages[1].startswith("overload over after")


def test_udp_backlog_reads_the_socket_receive_queue() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inode = inode_of(sock.fileno())
    assert udp_backlog([inode]) == 0
    for _ in range(10):
        sender.sendto(b"x" * 1000, sock.getsockname())
    deadline = time.monotonic() + 2
    while udp_backlog([inode]) < 10000 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert udp_backlog([inode]) >= 10000  # ten datagrams waiting, with their overhead
    sock.close()
    sender.close()


def _invite(port: int, n: int) -> bytes:
    return (
        f"INVITE sip:bob@{LOOPBACK} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {LOOPBACK}:{port};branch=z9hG4bK-flood-{n}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:a@{LOOPBACK}>;tag=f{n}\r\nTo: <sip:bob@{LOOPBACK}>\r\n"
        f"Call-ID: flood-{n}@test\r\nCSeq: 1 INVITE\r\nContact: <sip:a@{LOOPBACK}:{port}>\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def test_a_blocked_loop_sheds_new_calls_while_the_established_one_ends_normally(
    sipp: Callable[..., Sipp],
    sipp_uas: Callable[..., Sipp],
    sipdlg_server: Callable[..., SipdlgProcess],
) -> None:
    callee = sipp_uas("uas")
    server = sipdlg_server(uas_port=callee.port, db="none", overload_lag_ms=200, overload_recover=5)
    caller = sipp("uac", remote=server.sip_address, calls=1, pause_ms=3000, timeout=30)
    caller.start()
    wait_state(server, 4)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)  # the loop cannot run for two seconds
    time.sleep(2.0)
    server.proc.send_signal(signal.SIGCONT)
    time.sleep(0.3)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind((LOOPBACK, 0))
    client.settimeout(5)
    client.sendto(_invite(client.getsockname()[1], 1), (LOOPBACK, server.port))
    reply = client.recv(65536).decode()
    client.close()
    assert reply.startswith("SIP/2.0 503 ") and "\r\nRetry-After: 2\r\n" in reply
    res = caller.wait(30)  # its BYE, 3 s after the call was up, went through and was answered
    assert res.ok and res.successful == 1, res.describe()
    _, metrics = http_get(server, "/metrics")
    assert "sipdlg_overload_shed_invites_total 1.0" in metrics
    assert "sipdlg_overload_episodes_total 1.0" in metrics
    assert server.log_text().count("WARNING sipdlg.overload: overload: ") == 1

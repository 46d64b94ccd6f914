"""The per-source rate limit (engine/pike.py, OpenSIPS pike), sans-I/O: the limiter alone,
then inside the engine (tests/test_engine_kit.Rig)."""

from __future__ import annotations

import pytest
from helpers.mi_fake import make_dialog
from test_engine_kit import CALLEE, Call, Rig, crlf, one

from engine.dlg_table import DialogTable
from engine.events import Event, SourceBlocked, SourceReleased
from engine.message import SipMessage, parse
from engine.pike import Pike, PikeConfig, pike_for

FLOODER = "192.0.2.66"
OTHER = "192.0.2.7"


def request(to_tag: str = "") -> SipMessage:
    tag = f";tag={to_tag}" if to_tag else ""
    return parse(
        crlf(
            "OPTIONS sip:x@example.com SIP/2.0\n"
            "Via: SIP/2.0/UDP 192.0.2.66:5060;branch=z9hG4bK-1\n"
            "From: <sip:a@example.com>;tag=f\n"
            f"To: <sip:x@example.com>{tag}\n"
            "Call-ID: c1\nCSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n"
        )
    )


INITIAL = request()
IN_DIALOG = request("t")


NO_CALLS = DialogTable()


def burst(pike: Pike, source: str, count: int, now: float, events: list[Event]) -> int:
    """``count`` initial requests from ``source`` at ``now``; how many were dropped."""
    return sum(pike.drops(INITIAL, source, now, events, NO_CALLS) for _ in range(count))


def test_a_burst_over_the_limit_is_dropped_and_reported_once() -> None:
    pike = Pike(PikeConfig(requests=30, window=2.0))
    events: list[Event] = []
    assert burst(pike, FLOODER, 30, 100.0, events) == 0
    assert events == []
    assert burst(pike, FLOODER, 500, 100.5, events) == 500
    assert events == [SourceBlocked(FLOODER, 30, 2.0)]
    assert pike.dropped == 500 and pike.blocks == 1
    assert pike.blocked(100.5) == [FLOODER]


def test_in_dialog_requests_of_a_blocked_source_pass_for_calls_we_hold() -> None:
    pike = Pike(PikeConfig(requests=10, window=2.0))
    events: list[Event] = []
    burst(pike, FLOODER, 50, 10.0, events)
    calls = DialogTable()
    make_dialog(calls, 1, callid="c1")
    assert not pike.drops(IN_DIALOG, FLOODER, 10.1, events, calls)
    assert pike.drops(INITIAL, FLOODER, 10.1, events, calls)
    assert pike.drops(IN_DIALOG, FLOODER, 10.1, events, NO_CALLS)  # a made-up To-tag


def test_another_source_is_not_limited_by_the_flood() -> None:
    pike = Pike(PikeConfig(requests=10, window=2.0))
    events: list[Event] = []
    burst(pike, FLOODER, 100, 10.0, events)
    assert burst(pike, OTHER, 10, 10.0, events) == 0
    assert pike.blocked(10.0) == [FLOODER]


@pytest.mark.parametrize("source", ["203.0.113.9", "10.1.2.3", "2001:db8::5"])
def test_next_hops_and_trusted_networks_are_never_limited(source: str) -> None:
    config = PikeConfig(requests=5, window=2.0, trusted=("10.0.0.0/8", "2001:db8::/32"))
    pike = Pike(config, exempt={"203.0.113.9"})
    events: list[Event] = []
    assert burst(pike, source, 1000, 10.0, events) == 0
    assert events == [] and len(pike) == 0


def test_a_source_is_released_once_its_rate_falls_and_reported_once() -> None:
    pike = Pike(PikeConfig(requests=10, window=2.0))
    events: list[Event] = []
    burst(pike, FLOODER, 40, 10.0, events)
    assert burst(pike, FLOODER, 1, 11.0, events) == 1  # still flooding: still blocked
    assert burst(pike, FLOODER, 1, 15.0, events) == 0  # two quiet windows later
    assert events == [SourceBlocked(FLOODER, 10, 2.0), SourceReleased(FLOODER)]
    assert pike.blocked(15.0) == []


def test_a_source_at_the_edge_does_not_flap() -> None:
    """Released only at half the limit: a steady rate just under it stays blocked."""
    pike = Pike(PikeConfig(requests=10, window=1.0))
    events: list[Event] = []
    burst(pike, FLOODER, 20, 0.0, events)
    now = 0.0
    for _ in range(100):  # 9 per second, for 11 seconds
        now += 1 / 9
        pike.drops(INITIAL, FLOODER, now, events, NO_CALLS)
    assert events == [SourceBlocked(FLOODER, 10, 1.0)]


def test_a_silent_blocked_source_is_listed_as_released_then_forgotten() -> None:
    pike = Pike(PikeConfig(requests=10, window=2.0))
    events: list[Event] = []
    burst(pike, FLOODER, 40, 10.0, events)
    assert pike.blocked(10.0) == [FLOODER]
    assert pike.blocked(14.5) == []  # a pure read: nothing reported yet
    assert events == [SourceBlocked(FLOODER, 10, 2.0)]
    burst(pike, OTHER, 1, 14.5, events)  # any request sweeps the silent ones
    assert events[-1] == SourceReleased(FLOODER)
    assert len(pike) == 1


def test_memory_is_bounded() -> None:
    pike = Pike(PikeConfig(requests=10, window=2.0, max_sources=100))
    events: list[Event] = []
    for n in range(5000):
        pike.drops(INITIAL, f"198.51.{n // 256}.{n % 256}", 10.0 + n / 10000, events, NO_CALLS)
    assert len(pike) == 100
    for n in range(100):  # later, a trickle from one source forgets the silent ones
        pike.drops(INITIAL, OTHER, 20.0 + n, events, NO_CALLS)
    assert len(pike) == 1


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        Pike(PikeConfig(requests=0))


# ----------------------------------------------------------------- inside the engine


def flood_rig() -> Rig:
    return Rig(pike=PikeConfig(requests=30, window=2.0))


def test_the_engine_drops_a_flood_silently_and_counts_it() -> None:
    rig = flood_rig()
    flooder = (FLOODER, 5060)
    answered = 0
    for n in range(100):
        outs = rig.recv(Call(n, caller=flooder).invite(), src=flooder)
        answered += bool(outs)
    assert answered == 30  # 100 Trying and a forwarded INVITE each; then nothing at all
    assert rig.sources == [SourceBlocked(FLOODER, 30, 2.0)]
    assert rig.eng.stats.drop_requests == 70
    assert rig.eng.pike is not None and rig.eng.pike.dropped == 70
    assert len(rig.eng.dialogs) == 30


def test_an_established_call_of_a_blocked_source_can_still_hang_up() -> None:
    rig = flood_rig()
    flooder = (FLOODER, 5060)
    call = Call(1, caller=flooder)
    outs = rig.recv(call.invite(), src=flooder)
    inv = one(outs, method="INVITE")
    ok = one(rig.recv(call.reply(inv, 200, "OK", sdp=True), src=CALLEE), status=200)
    rig.recv(call.ack(ok), src=flooder)
    for n in range(2, 80):
        rig.recv(Call(n, caller=flooder).invite(), src=flooder)
    assert rig.sources == [SourceBlocked(FLOODER, 30, 2.0)]
    bye = one(rig.recv(call.in_dialog("BYE", ok), src=flooder), method="BYE")
    assert bye.dest == CALLEE
    assert rig.recv(Call(99, caller=flooder).invite(), src=flooder) == []


def test_responses_are_not_counted() -> None:
    rig = flood_rig()
    stray = crlf(
        "SIP/2.0 200 OK\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKnone\n"
        "From: <sip:a@example.com>;tag=f\nTo: <sip:b@example.com>;tag=t\n"
        "Call-ID: stray\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n"
    )
    for _ in range(200):
        rig.recv(stray, src=(FLOODER, 5060))
    assert rig.sources == []
    outs = rig.recv(Call(1, caller=(FLOODER, 5060)).invite(), src=(FLOODER, 5060))
    assert one(outs, method="INVITE").dest == CALLEE


def test_our_next_hop_is_never_limited() -> None:
    rig = flood_rig()
    for n in range(200):  # the next hop (CALLEE's address) sending new requests our way
        rig.recv(Call(n, caller=CALLEE).invite(), src=CALLEE)
    assert rig.sources == []
    assert rig.eng.stats.drop_requests == 0


def test_the_engine_exempts_its_own_addresses_and_its_next_hop() -> None:
    pike = pike_for(PikeConfig(requests=2), ["127.0.0.1"], ["203.0.113.5", "[2001:DB8:0::5]"])
    assert pike is not None
    events: list[Event] = []
    for source in ("127.0.0.1", "203.0.113.5", "2001:db8::5"):
        assert burst(pike, source, 50, 1.0, events) == 0
    assert burst(pike, "203.0.113.6", 50, 1.0, events) == 48  # all but the first 2
    assert pike_for(None, ["127.0.0.1"], []) is None

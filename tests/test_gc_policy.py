"""app/gc_policy.py: the collector runs on a clock, survivors are frozen out of its scans, and
the watchdog finds cycles leaked among them (pure units: the gc module, no I/O)."""

from __future__ import annotations

import gc
import logging
import weakref
from collections.abc import Iterator

import pytest

from app import gc_policy
from app.gc_policy import MIDDLE_EVERY, GcPolicy


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


class Live:
    """What the engine would report as held (dialogs, transactions, timers)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> int:
        return self.count


@pytest.fixture
def live() -> Live:
    return Live()


@pytest.fixture
def policy(live: Live) -> Iterator[GcPolicy]:
    p = GcPolicy(rescan_period=0, live=live)
    p.install()
    try:
        yield p
    finally:
        p.stop()
        gc.unfreeze()


def cycle() -> Node:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a


def freeze_dropped(policy: GcPolicy, nodes: list[Node]) -> list[weakref.ref[Node]]:
    """Let ``nodes`` live through the middle collection (so they are frozen), then drop them."""
    for _ in range(MIDDLE_EVERY):
        policy.tick()
    probes = [weakref.ref(n) for n in nodes]
    nodes.clear()
    return probes


def test_install_turns_the_automatic_collector_off_and_stop_on(policy: GcPolicy) -> None:
    assert not gc.isenabled()
    assert gc.get_freeze_count() > 1000  # everything alive at start-up
    assert abs(policy.floor - policy.allocated_blocks()) < 10_000
    policy.stop()
    assert gc.isenabled()


def test_ticks_collect_young_cycles_and_freeze_only_middle_survivors(policy: GcPolicy) -> None:
    probe = weakref.ref(cycle())
    before = gc.get_freeze_count()
    keep = [Node() for _ in range(1000)]
    policy.tick()  # young only
    assert probe() is None  # a cycle that died young is collected
    assert gc.get_freeze_count() < before + len(keep)
    assert policy.pauses[0] == 1
    for _ in range(MIDDLE_EVERY - 1):
        policy.tick()
    assert policy.pauses[1] == 1
    assert gc.get_freeze_count() >= before + len(keep)
    assert policy.pause_max > 0
    # Frozen objects are still freed by reference counting.
    first = weakref.ref(keep[0])
    del keep
    assert first() is None


def test_rescan_frees_cycles_among_frozen_objects(policy: GcPolicy) -> None:
    [probe] = freeze_dropped(policy, [cycle()])
    gc.collect(1)
    assert probe() is not None  # out of the collector's sight while frozen
    assert policy.rescan() >= 2
    assert probe() is None
    assert policy.rescans == 1 and policy.rescan_freed >= 2
    assert gc.get_freeze_count() > 0  # what is alive is frozen again


def test_watchdog_rescans_when_memory_outgrows_the_engine(
    policy: GcPolicy, live: Live, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(gc_policy, "SLACK", 20_000)
    live.count = 100
    assert not policy.check(now=0.0)  # nothing leaked yet
    probes = freeze_dropped(policy, [cycle() for _ in range(20_000)])  # 40,000 objects leaked
    for _ in range(MIDDLE_EVERY):
        policy.tick()
    assert all(p() is not None for p in probes)
    assert policy.allocated_blocks() > policy.budget()
    with caplog.at_level(logging.WARNING, logger="sipdlg.gc"):
        assert policy.check(now=1.0)
    assert all(p() is None for p in probes)
    assert policy.rescan_freed >= 40_000
    assert "rescanning for leaked reference cycles" in caplog.text
    assert not policy.check(now=2.0)  # back under the budget


def test_watchdog_takes_live_growth_as_the_new_normal(
    policy: GcPolicy, live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gc_policy, "SLACK", 20_000)
    keep = [Node() for _ in range(50_000)]  # alive, but the engine does not count them
    for _ in range(MIDDLE_EVERY):
        policy.tick()
    assert policy.check(now=0.0)  # one rescan finds nothing to free...
    assert (
        policy.allocated_blocks() <= policy.budget()
    )  # ...and the floor rises: no rescan every time
    assert not policy.check(now=10_000.0)
    assert len(keep) == 50_000


def test_watchdog_rescans_at_most_every_min_gap(
    policy: GcPolicy, live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gc_policy, "SLACK", 0)
    monkeypatch.setattr(gc_policy, "PER_LIVE", 0)
    policy.floor = 0
    assert policy.check(now=100.0)
    policy.floor = 0
    assert not policy.check(now=100.0 + gc_policy.MIN_RESCAN_GAP / 2)
    assert policy.check(now=100.0 + gc_policy.MIN_RESCAN_GAP)


def test_stop_removes_the_callback(policy: GcPolicy) -> None:
    policy.stop()
    count = sum(policy.pauses)
    gc.collect(0)
    assert sum(policy.pauses) == count


def test_rescan_period_setting() -> None:
    from app.config import ConfigError, load_settings

    assert load_settings({}, None, {}).gc_rescan_period == 0
    assert load_settings({"gc_rescan_period": 3600}, None, {}).gc_rescan_period == 3600
    assert load_settings({}, None, {"SIPDLG_GC_RESCAN_PERIOD": "60"}).gc_rescan_period == 60
    with pytest.raises(ConfigError, match="gc_rescan_period"):
        load_settings({"gc_rescan_period": -1}, None, {})

"""app/gc_policy.py: survivors are frozen out of the collector's scans, and a rescan still
frees garbage cycles among them (pure units: the gc module, no I/O)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from app.gc_policy import THRESHOLD0, THRESHOLD1, GcPolicy


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def policy() -> Iterator[GcPolicy]:
    saved = gc.get_threshold()
    p = GcPolicy(rescan_period=0)
    p.install()
    try:
        yield p
    finally:
        p.stop()
        gc.unfreeze()
        gc.set_threshold(*saved)


def test_install_sets_thresholds_and_freezes_startup(policy: GcPolicy) -> None:
    assert gc.get_threshold()[:2] == (THRESHOLD0, THRESHOLD1)
    assert policy.frozen() > 1000  # everything alive at start-up


def test_middle_generation_survivors_are_frozen(policy: GcPolicy) -> None:
    keep = [Node() for _ in range(5000)]
    before = policy.frozen()
    gc.collect(1)
    assert policy.frozen() >= before + len(keep)
    assert policy.pauses[1] >= 1 and policy.pause_max > 0
    # Frozen objects are still freed by reference counting.
    probe = weakref.ref(keep[0])
    del keep
    assert probe() is None


def test_young_collections_do_not_freeze(policy: GcPolicy) -> None:
    before = policy.frozen()
    keep = [Node() for _ in range(1000)]
    gc.collect(0)
    assert policy.frozen() < before + len(keep)
    assert policy.pauses[0] >= 1


def test_rescan_frees_cycles_among_frozen_objects(policy: GcPolicy) -> None:
    a, b = Node(), Node()
    a.other, b.other = b, a
    probe = weakref.ref(a)
    gc.collect(1)  # survivors frozen, the cycle with them
    del a, b
    gc.collect()
    assert probe() is not None  # out of the collector's sight while frozen
    assert policy.rescan() >= 2
    assert probe() is None
    assert policy.rescans == 1
    assert policy.frozen() > 0  # what is alive is frozen again


def test_stop_removes_the_callback(policy: GcPolicy) -> None:
    policy.stop()
    count = sum(policy.pauses)
    gc.collect(0)
    assert sum(policy.pauses) == count


def test_rescan_period_setting() -> None:
    from app.config import ConfigError, load_settings

    assert load_settings({}, None, {}).gc_rescan_period == 3600
    assert load_settings({"gc_rescan_period": 0}, None, {}).gc_rescan_period == 0
    assert load_settings({}, None, {"SIPDLG_GC_RESCAN_PERIOD": "60"}).gc_rescan_period == 60
    with pytest.raises(ConfigError, match="gc_rescan_period"):
        load_settings({"gc_rescan_period": -1}, None, {})

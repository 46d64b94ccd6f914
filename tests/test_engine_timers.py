"""engine/timers.py: fixed-delay lanes and the heap run as one queue, in deadline order."""

from __future__ import annotations

from engine.timers import LANE_MAX_DELAY, MAX_LANES, TimerQueue


def test_lanes_and_heap_fire_in_deadline_order_ties_in_scheduling_order() -> None:
    q = TimerQueue()
    fired: list[str] = []
    q.call_later(0.0, 32.0, fired.append, "B@32")
    q.call_later(0.0, 0.5, fired.append, "A@0.5")
    q.call_at(1.0, fired.append, "abs@1")
    q.call_later(0.5, 0.5, fired.append, "A@1")  # same lane, later
    q.call_later(0.0, 1.0, fired.append, "C@1")  # another lane, same deadline as both above
    q.call_later(0.0, 43200.0, fired.append, "lifetime")  # past LANE_MAX_DELAY: the heap
    assert q.next_deadline() == 0.5
    assert q.run_due(1.0) == 4
    assert fired == ["A@0.5", "abs@1", "A@1", "C@1"]
    assert q.run_due(100.0) == 1 and fired[-1] == "B@32"
    assert q.next_deadline() == 43200.0
    assert len(q) == 1


def test_cancelled_timers_are_skipped_and_drop_their_callback() -> None:
    q = TimerQueue()
    fired: list[int] = []
    keep = q.call_later(0.0, 5.0, fired.append, 1)
    drop = q.call_later(0.0, 5.0, fired.append, 2)
    heap = q.call_later(0.0, 3600.0, fired.append, 3)
    drop.cancel()
    heap.cancel()
    assert drop.args == () and heap.args == ()
    assert q.run_due(10_000.0) == 1
    assert fired == [1] and keep.args == ()  # a fired timer holds nothing either
    assert q.next_deadline() is None and len(q) == 0


def test_a_clock_that_goes_back_or_too_many_delays_fall_back_to_the_heap() -> None:
    q = TimerQueue()
    fired: list[float] = []
    q.call_later(10.0, 1.0, fired.append, 11.0)
    q.call_later(5.0, 1.0, fired.append, 6.0)  # earlier than the lane's tail: heap
    for n in range(MAX_LANES + 5):
        delay = 1.0 + (n + 1) / 1000
        q.call_later(0.0, delay, fired.append, delay)
    assert len(q._lanes) == MAX_LANES
    q.run_due(LANE_MAX_DELAY)
    assert fired == sorted(fired)
    assert len(fired) == MAX_LANES + 7

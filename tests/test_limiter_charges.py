"""KeyedLimiter.take: several buckets and costs per call, all or nothing (injected clock)."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyrate_limiter import Rate

from syncfetch import RateLimitExceeded
from syncfetch._stores.base import AGING, Charge
from syncfetch._stores.memory import KeyedLimiter, _holds, _Waiter
from tests.test_limiter import FakeTime

ORIGIN = Charge("origin", ((10, 1000),), 1)
SEARCH = Charge("search", ((3, 1000),), 1)


def make(t: FakeTime) -> KeyedLimiter:
    return KeyedLimiter([], clock=t.clock, sleep=t.sleep, arrival=0.0)


def test_a_call_pays_every_bucket_and_the_tighter_binds() -> None:
    t = FakeTime()
    limiter = make(t)
    start = t.now
    for _ in range(4):
        limiter.settle(limiter.take("o", [ORIGIN, SEARCH], None))
    assert t.now - start == pytest.approx(1.0, abs=1e-3)  # the 4th search waited a window
    # The first 3 left both windows; the origin counted the 4th: 9 more fit now.
    for _ in range(9):
        limiter.settle(limiter.take("o", [ORIGIN], t.now))
    with pytest.raises(RateLimitExceeded):
        limiter.take("o", [ORIGIN], t.now)


def test_all_or_nothing_a_call_that_cannot_have_every_bucket_takes_none() -> None:
    t = FakeTime()
    limiter = make(t)
    for _ in range(3):
        limiter.settle(limiter.take("o", [SEARCH], None))
    # search is full: a call paying origin and search within no wait takes neither...
    with pytest.raises(RateLimitExceeded) as info:
        limiter.take("o", [ORIGIN, SEARCH], t.now)
    assert info.value.key == "search"
    # ...so the origin still has all 10 tokens.
    for _ in range(10):
        limiter.settle(limiter.take("o", [ORIGIN], t.now))


def test_a_waiting_call_holds_no_token_of_another_bucket() -> None:
    """While one call waits for search, the origin's tokens stay free for others."""
    gate = threading.Event()
    limiter = KeyedLimiter([], arrival=0.0)
    for _ in range(3):
        limiter.settle(limiter.take("o", [SEARCH], None))
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        gate.wait(5)

    limiter.sleep = sleep
    waiter = threading.Thread(target=lambda: limiter.take("o", [ORIGIN, SEARCH], None))
    waiter.start()
    try:
        for _ in range(500):
            if slept:
                break
            threading.Event().wait(0.01)
        assert slept, "the call paying a full bucket did not wait"
        for _ in range(10):  # no wait: the waiter holds none of them
            limiter.settle(limiter.take("o", [ORIGIN], 0.0))
    finally:
        gate.set()
        limiter.sleep = lambda s: None
        waiter.join(5)


def test_costs_take_several_tokens() -> None:
    t = FakeTime()
    limiter = make(t)
    limiter.settle(limiter.take("o", [Charge("g", ((10, 1000),), 7)], None))
    start = t.now
    limiter.settle(limiter.take("o", [Charge("g", ((10, 1000),), 3)], None))
    assert t.now == start  # 7 + 3 fit
    limiter.settle(limiter.take("o", [Charge("g", ((10, 1000),), 1)], None))
    assert t.now - start == pytest.approx(1.0, abs=1e-3)  # the 7 had to leave


def test_a_cost_no_window_can_hold_raises_valueerror_at_once() -> None:
    t = FakeTime()
    limiter = make(t)
    with pytest.raises(ValueError, match="can never be taken from g"):
        limiter.take("o", [Charge("g", ((10, 1000), (100, 60_000)), 11)], None)
    assert t.sleeps == []


def test_free_calls_and_unlimited_routes_take_nothing() -> None:
    t = FakeTime()
    limiter = make(t)
    token = limiter.take("o", [Charge("g", ((1, 1000),), 0), Charge("h", (), 5)], None)
    assert token.handle is None
    limiter.settle(token)
    assert limiter.bucket_count() == 0


def test_acquire_still_counts_one_token_on_the_session_rates() -> None:
    t = FakeTime()
    limiter = KeyedLimiter([Rate(2, 1000)], clock=t.clock, sleep=t.sleep)
    for _ in range(2):
        limiter.settle(limiter.acquire("k", None))
    with pytest.raises(RateLimitExceeded):
        limiter.acquire("k", t.now)
    limiter.settle(limiter.take("x", [Charge("k", ((2, 1000),), 0)], t.now))  # free


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.sampled_from([0, 1, 2]), min_size=1, max_size=3, unique=True),
            st.integers(min_value=0, max_value=4),
            st.floats(min_value=0, max_value=0.7),
        ),
        max_size=40,
    )
)
def test_no_window_of_any_bucket_ever_holds_more_than_its_limit(
    calls: list[tuple[list[int], int, float]],
) -> None:
    """Random calls over three buckets, each with random costs and pauses between them:
    counted after the fact, every window of every bucket stays within its limit."""
    buckets = [((4, 1000),), ((6, 1000), (9, 3000)), ((5, 500),)]
    t = FakeTime()
    limiter = make(t)
    taken: dict[int, list[tuple[float, int]]] = {0: [], 1: [], 2: []}
    for which, cost, gap in calls:
        t.now += gap
        token = limiter.take("o", [Charge(str(b), buckets[b], cost) for b in which], None)
        limiter.settle(token)
        for b in which:
            taken[b].append((t.now, cost))
    for b, windows in enumerate(buckets):
        for limit, ms in windows:
            for start, _ in taken[b]:
                inside = sum(c for when, c in taken[b] if start <= when < start + ms / 1000)
                assert inside <= limit


def test_correct_before_and_after_settle() -> None:
    t = FakeTime()
    limiter = make(t)
    bucket = ((10, 1000),)
    early = limiter.take("o", [Charge("g", bucket, 8)], None)
    limiter.correct(early, "g", 1)  # before settle: the pending charge shrinks
    limiter.settle(early)
    late = limiter.take("o", [Charge("g", bucket, 8)], t.now)  # 1 + 8 fit
    limiter.settle(late)
    limiter.correct(late, "g", 2)  # after settle: the dated entry shrinks
    limiter.correct(late, "other", 0)  # a key it did not pay: ignored
    limiter.settle(limiter.take("o", [Charge("g", bucket, 7)], t.now))  # 1 + 2 + 7
    with pytest.raises(RateLimitExceeded):
        limiter.take("o", [Charge("g", bucket, 1)], t.now)


# -- priorities -------------------------------------------------------------------------------


def test_a_higher_priority_waiter_takes_the_next_token_ahead_of_an_earlier_lower_one() -> None:
    limiter = KeyedLimiter([], arrival=0.0)
    bucket = [Charge("k", ((1, 500),), 1)]
    limiter.settle(limiter.take("o", bucket, None))  # the bucket is full for 0.5 s
    order: list[str] = []

    def call(name: str, priority: int) -> None:
        limiter.settle(limiter.take("o", bucket, None, priority))
        order.append(name)

    low = threading.Thread(target=call, args=("low", 0))
    low.start()
    threading.Event().wait(0.1)  # low is waiting first
    high = threading.Thread(target=call, args=("high", 5))
    high.start()
    low.join(5)
    high.join(5)
    assert order == ["high", "low"]
    assert limiter._logs["k"].waiters == {}


def test_a_later_call_of_one_priority_does_not_take_ahead_of_an_earlier_waiter() -> None:
    t = FakeTime()
    limiter = make(t)
    limiter.settle(limiter.take("o", [Charge("k", ((5, 1000),), 1)], None))
    waiter = _Waiter(0, t.now - 0.5)
    limiter._logs["k"].waiters[waiter] = None  # someone of priority 0 waits for 4
    waiter.costs[limiter._logs["k"]] = 4
    with pytest.raises(RateLimitExceeded):  # room for its own 1, not for 4 + 1
        limiter.take("o", [Charge("k", ((5, 1000),), 1)], t.now)
    with pytest.raises(RateLimitExceeded):  # a priority -1 call is held back too
        limiter.take("o", [Charge("k", ((5, 1000),), 1)], t.now, -1)
    limiter.settle(limiter.take("o", [Charge("k", ((5, 1000),), 1)], t.now, 1))  # not 1
    assert list(limiter._logs["k"].waiters) == [waiter]  # the refused calls left no waiter


def test_waiting_raises_a_priority_so_a_batch_is_not_starved() -> None:
    assert AGING == 10.0  # one priority per 10 s waited, as documented
    batch = _Waiter(0, 100.0, seq=0)
    # After 5 s the batch (0 + 0.5) does not outrank a new call of priority 1...
    assert not _holds(batch, _Waiter(1, 105.0, seq=1))
    # ...after 15 s (0 + 1.5) it does, and a call of priority 2 still goes first.
    assert _holds(batch, _Waiter(1, 115.0, seq=1))
    assert not _holds(batch, _Waiter(2, 115.0, seq=1))
    # A priority-1 call that has itself waited 10 s (arrived at 105) is not held back.
    assert not _holds(batch, _Waiter(1, 105.0, seq=1))
    # One priority: the earlier arrival first, and on one arrival time, the first seen.
    assert _holds(batch, _Waiter(0, 100.5, seq=1))
    assert _holds(batch, _Waiter(0, 100.0, seq=1))
    assert not _holds(_Waiter(0, 100.0, seq=2), _Waiter(0, 100.0, seq=1))


def test_a_waiter_holds_back_only_the_buckets_it_lacks_room_in() -> None:
    """A high-priority call waiting for a full bucket y does not stop low-priority calls
    from taking from bucket x, which has room for it."""
    t = FakeTime()
    limiter = make(t)
    x, y = Charge("x", ((5, 1000),), 1), Charge("y", ((1, 60_000),), 1)
    limiter.settle(limiter.take("o", [y], None))  # y is full for a minute
    with pytest.raises(RateLimitExceeded):
        limiter.take("o", [x, y], t.now + 1, priority=9)  # refused: gone again...
    high = _Waiter(9, t.now)
    limiter._logs["y"].waiters[high] = None  # ...so enter one that stays, as a sleeper is
    high.costs[limiter._logs["y"]] = 1
    limiter.settle(limiter.take("o", [x], t.now))  # x is not held back
    with pytest.raises(RateLimitExceeded):
        limiter.take("o", [y], t.now + 90)  # y is: the high call goes first (at 60 s)

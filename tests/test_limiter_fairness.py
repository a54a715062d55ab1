"""KeyedLimiter's lines: calls of one bucket and one (aged) priority take in arrival order,
a big cost is not overtaken by later small ones, and each waiter wakes for its own turn.

Most tests run the calls on threads under a virtual clock (``VirtualTime``): time moves
only when every thread sleeps, and of the sleepers due at one moment the one that went
to sleep last runs first, the adversarial pick a loaded machine may make, so any order
seen comes from the limiter, not from the scheduler.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from syncfetch import RateLimitExceeded, SessionClosed
from syncfetch._stores import memory as _memory
from syncfetch._stores.base import Charge, Token
from syncfetch._stores.memory import KeyedLimiter, _Waiter
from tests.test_limiter import FakeTime


class VirtualTime:
    """A clock and a sleep shared by ``threads`` threads, one of them running at a time."""

    def __init__(self, threads: int) -> None:
        self.now = 0.0
        self._cond = threading.Lock()
        self._running = threads  # started and neither sleeping nor done
        self._sleepers: list[tuple[float, int, threading.Event]] = []
        self._seq = 0
        self.sleeps: dict[str, int] = {}

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        name = threading.current_thread().name
        self.sleeps[name] = self.sleeps.get(name, 0) + 1
        event = threading.Event()
        with self._cond:
            self._seq += 1
            # Of sleepers due at one moment, the latest to sleep runs first.
            self._sleepers.append((self.now + seconds, -self._seq, event))
            self._running -= 1
            self._advance()
        assert event.wait(10), "virtual time stalled"

    def done(self) -> None:
        with self._cond:
            self._running -= 1
            self._advance()

    def _advance(self) -> None:
        if self._running == 0 and self._sleepers:
            self._sleepers.sort(key=lambda s: (s[0], s[1]))
            when, _, event = self._sleepers.pop(0)
            self.now = max(self.now, when)
            self._running += 1
            event.set()


def run_calls(
    limiter: KeyedLimiter,
    vt: VirtualTime,
    calls: list[tuple[str, float, list[Charge], int]],
    refused: list[str] | None = None,
    deadline: Callable[[float], float | None] = lambda now: None,
) -> list[str]:
    """Run ``(name, arrival, charges, priority)`` calls, each on its own thread; the names
    in the order their tokens were taken (under the limiter's lock)."""
    order: list[str] = []

    def call(name: str, arrival: float, charges: list[Charge], priority: int) -> None:
        try:
            vt.sleep(arrival)
            try:
                token = limiter.take(name, charges, deadline(vt.now), priority)
            except RateLimitExceeded:
                assert refused is not None
                refused.append(name)
                return
            order.append(token.key)
            limiter.settle(token)
        finally:
            vt.done()

    threads = [
        threading.Thread(target=call, args=spec, name=spec[0], daemon=True) for spec in calls
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not any(thread.is_alive() for thread in threads)
    return order


def full(limiter: KeyedLimiter, charge: Charge) -> None:
    """Take ``charge`` at once (the bucket starts full)."""
    limiter.settle(limiter.take("setup", [charge], None))


def test_calls_of_one_priority_take_in_arrival_order() -> None:
    vt = VirtualTime(8)
    limiter = KeyedLimiter([], clock=vt.clock, sleep=vt.sleep, arrival=0.0)
    bucket = Charge("k", ((1, 1000),), 1)
    full(limiter, bucket)
    # Arrivals 1/64 s apart (exact in binary: every wake is exact), all while it is full.
    calls = [(f"c{i}", i / 64, [bucket], 0) for i in range(1, 9)]
    assert run_calls(limiter, vt, calls) == [f"c{i}" for i in range(1, 9)]
    # Each waiter woke once, for its own turn: one sleep to arrive, one to wait.
    assert vt.sleeps == {f"c{i}": 2 for i in range(1, 9)}
    assert limiter._logs["k"].waiters == {}


def test_a_big_cost_is_not_overtaken_by_later_small_ones() -> None:
    vt = VirtualTime(8)
    limiter = KeyedLimiter([], clock=vt.clock, sleep=vt.sleep, arrival=0.0)
    windows = ((10, 1000),)
    full(limiter, Charge("k", windows, 9))  # room for 1
    calls = [("big", 1 / 64, [Charge("k", windows, 10)], 0)]
    calls += [(f"s{i}", (i + 1) / 64, [Charge("k", windows, 1)], 0) for i in range(1, 8)]
    # The 1 token free when the small calls came was not theirs to take: the big one was
    # first in line (before, each small call took the room as it appeared, and the big
    # one waited as long as they kept coming).
    assert run_calls(limiter, vt, calls) == ["big"] + [f"s{i}" for i in range(1, 8)]


def test_small_calls_take_beside_a_big_one_only_what_leaves_it_its_room() -> None:
    vt = VirtualTime(8)
    limiter = KeyedLimiter([], clock=vt.clock, sleep=vt.sleep, arrival=0.0)
    windows = ((10, 1000),)
    full(limiter, Charge("k", windows, 9))  # room for 1
    taken_at: dict[str, float] = {}
    original = limiter.settle

    def settle(token: Token) -> None:
        taken_at[token.key] = vt.now
        original(token)

    limiter.settle = settle  # type: ignore[method-assign]
    calls = [("big", 1 / 64, [Charge("k", windows, 5)], 0)]
    calls += [(f"s{i}", (i + 1) / 64, [Charge("k", windows, 1)], 0) for i in range(1, 8)]
    order = run_calls(limiter, vt, calls)
    # At 1 s, 9 tokens leave the window: the big call's 5 are kept for it whichever
    # thread runs first, and 5 small calls take the rest beside it.
    assert taken_at["big"] == 1.0
    assert sorted(n for n, at in taken_at.items() if at == 1.0) == ["big"] + [
        f"s{i}" for i in range(1, 6)
    ]
    assert order[-2:] == ["s6", "s7"]  # then the rest, in arrival order


def test_a_higher_priority_goes_ahead_and_aging_keeps_order_fair() -> None:
    vt = VirtualTime(4)
    limiter = KeyedLimiter([], clock=vt.clock, sleep=vt.sleep, arrival=0.0)
    bucket = Charge("k", ((1, 1000),), 1)
    full(limiter, bucket)
    calls = [
        ("low1", 1 / 64, [bucket], 0),
        ("low2", 2 / 64, [bucket], 0),
        ("high", 3 / 64, [bucket], 1),  # outranks both (they have waited < 10 s)
        ("low3", 4 / 64, [bucket], 0),
    ]
    assert run_calls(limiter, vt, calls) == ["high", "low1", "low2", "low3"]


def test_aging_lets_a_long_waiter_go_before_new_higher_priorities() -> None:
    vt = VirtualTime(3)
    limiter = KeyedLimiter([], clock=vt.clock, sleep=vt.sleep, arrival=0.0)
    bucket = Charge("k", ((1, 30_000),), 1)  # one per 30 s
    full(limiter, bucket)
    calls = [
        ("batch", 1.0, [bucket], 0),  # waits from 1 s: at 29 s it is worth 2.8
        ("vip", 28.0, [bucket], 2),  # arrives at 28 s worth 2: behind the batch
        ("vip2", 2.0, [bucket], 1),  # arrives at 2 s worth 1 (batch 0.1): ahead
    ]
    assert run_calls(limiter, vt, calls) == ["vip2", "batch", "vip"]


def test_the_wait_behind_the_line_counts_toward_max_wait() -> None:
    vt = VirtualTime(3)
    limiter = KeyedLimiter([], clock=vt.clock, sleep=vt.sleep, arrival=0.0)
    bucket = Charge("k", ((1, 1000),), 1)
    full(limiter, bucket)
    refused: list[str] = []
    calls = [(f"c{i}", i / 64, [bucket], 0) for i in range(1, 4)]
    # Each may wait 1.5 s: c1 (turn at 1 s) fits, c2 (2 s) and c3 (3 s) do not.
    order = run_calls(limiter, vt, calls, refused, deadline=lambda now: now + 1.5)
    assert order == ["c1"] and sorted(refused) == ["c2", "c3"]
    assert vt.sleeps["c2"] == vt.sleeps["c3"] == 1  # refused at once, without sleeping


def test_a_call_behind_a_big_waiter_is_refused_at_once_by_its_deadline() -> None:
    t = FakeTime()
    limiter = KeyedLimiter([], clock=t.clock, sleep=t.sleep, arrival=0.0)
    windows = ((5, 1000),)
    limiter.settle(limiter.take("o", [Charge("k", windows, 5)], None))  # full for 1 s
    big = _Waiter(0, t.now - 0.1)
    log = limiter._logs["k"]
    log.waiters[big] = None
    big.costs[log], big.wake = 5, t.now + 1.0
    big.until[log] = big.wake
    with pytest.raises(RateLimitExceeded) as caught:
        # Room for 1 in 1 s, but the big call ahead takes all 5: the turn is in 2 s.
        limiter.take("o", [Charge("k", windows, 1)], t.now + 1.5)
    assert caught.value.retry_after == pytest.approx(2.0)
    assert t.sleeps == []


def test_a_waiter_for_another_bucket_does_not_hold_this_one_meanwhile() -> None:
    t = FakeTime()
    limiter = KeyedLimiter([], clock=t.clock, sleep=t.sleep, arrival=0.0)
    x = Charge("x", ((5, 1000),), 1)
    limiter.settle(limiter.take("o", [x], None))  # room for 4
    log = limiter._logs["x"]
    other = _Waiter(9, t.now - 0.1)  # ahead in x's line, but it waits 50 s for y
    log.waiters[other] = None
    other.costs[log], other.until[log], other.wake = 4, t.now - 0.05, t.now + 50
    limiter.settle(limiter.take("o", [x], t.now))  # x has room for its 4: not held back
    # x now lacks room for its 4 (3 left), yet it waits for y for 50 s more: x is not
    # held for it meanwhile (a review found a call refused, "next in 59.9 s", here).
    limiter.settle(limiter.take("o", [x], t.now))
    # Once x is what it waits for (its turn there is its wake), it holds x's line.
    other.until[log] = other.wake = t.now + 0.5
    with pytest.raises(RateLimitExceeded):
        limiter.take("o", [x], t.now)


@pytest.mark.slow
def test_threads_take_in_arrival_order_on_a_real_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """10 threads on the real clock, one costing 3 among calls of 2: the tokens are taken
    (recorded under the limiter's lock) in the order the calls joined the line."""
    taken: list[str] = []

    class Recorded(Token):
        def __init__(self, key: str, *args: object, **kwargs: object) -> None:
            super().__init__(key, *args, **kwargs)  # type: ignore[arg-type]
            taken.append(key)

    monkeypatch.setattr(_memory, "Token", Recorded)
    limiter = KeyedLimiter([], arrival=0.0)
    windows = ((3, 60),)  # 3 per 60 ms: no two calls of the line fit in it together
    limiter.settle(limiter.take("setup", [Charge("k", windows, 3)], None))
    taken.clear()

    def call(name: str, cost: int) -> None:
        limiter.settle(limiter.take(name, [Charge("k", windows, cost)], 10.0 + time.monotonic()))

    names = [f"t{i}" for i in range(10)]
    threads = []
    for i, name in enumerate(names):
        thread = threading.Thread(target=call, args=(name, 3 if i == 4 else 2))
        thread.start()
        threads.append(thread)
        # Each joins the line (or has taken) before the next starts: a known arrival order.
        end = time.monotonic() + 5
        while len(limiter._logs["k"].waiters) + len(taken) < i + 1 and time.monotonic() < end:
            time.sleep(0.0005)
    for thread in threads:
        thread.join(10)
    assert taken == names
    assert limiter._logs["k"].waiters == {}


def test_a_waiter_ended_by_close_leaves_the_line_to_the_next() -> None:
    limiter = KeyedLimiter([], arrival=0.0)
    bucket = Charge("k", ((1, 100),), 1)
    full(limiter, bucket)
    next_in_line = threading.Event()

    def sleep(seconds: float) -> None:
        if threading.current_thread().name == "closed":
            assert next_in_line.wait(5)
            raise SessionClosed("the session was closed while this call waited")
        next_in_line.set()
        time.sleep(seconds)

    limiter.sleep = sleep
    outcome: dict[str, object] = {}

    def call(name: str) -> None:
        try:
            limiter.settle(limiter.take(name, [bucket], time.monotonic() + 5))
            outcome[name] = "took"
        except SessionClosed as exc:
            outcome[name] = exc

    closed = threading.Thread(target=call, args=("closed",), name="closed")
    closed.start()
    end = time.monotonic() + 5
    while not limiter._logs["k"].waiters and time.monotonic() < end:
        time.sleep(0.001)
    later = threading.Thread(target=call, args=("later",), name="later")
    later.start()
    closed.join(5)
    later.join(5)
    assert isinstance(outcome["closed"], SessionClosed) and outcome["later"] == "took"
    assert limiter._logs["k"].waiters == {}

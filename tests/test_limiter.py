"""KeyedLimiter with an injected clock: exact and instant."""

import threading

import pytest
from pyrate_limiter import Rate

from syncfetch import RateLimitExceeded
from syncfetch._stores.base import Token
from syncfetch._stores.memory import KeyedLimiter


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make(rates: list[Rate], t: FakeTime) -> KeyedLimiter:
    return KeyedLimiter(rates, clock=t.clock, sleep=t.sleep)


def take(limiter: KeyedLimiter, key: str, deadline: float | None = None) -> Token:
    """A token whose request is sent and answered at once."""
    token = limiter.acquire(key, deadline)
    limiter.settle(token)
    return token


def max_in_window(times: list[float], width: float) -> int:
    best = 0
    for i, start in enumerate(times):
        best = max(best, sum(1 for t in times[i:] if t < start + width))
    return best


def test_sliding_window_is_never_exceeded_and_is_tight() -> None:
    t = FakeTime()
    limiter = make([Rate(10, 1000)], t)
    granted = []
    for _ in range(35):
        take(limiter, "k", None)
        granted.append(t.now)
    assert max_in_window(granted, 1.0) == 10
    # 35 tokens at 10/s: the last can go at 3 s (plus a few ms of rounding), no later.
    assert granted[-1] - granted[0] == pytest.approx(3.0, abs=0.01)


def test_two_rates_both_bind() -> None:
    t = FakeTime()
    limiter = make([Rate(5, 1000), Rate(8, 10_000)], t)
    granted = []
    for _ in range(9):
        take(limiter, "k", None)
        granted.append(t.now)
    assert max_in_window(granted, 1.0) <= 5
    assert max_in_window(granted, 10.0) == 8
    assert granted[8] - granted[0] == pytest.approx(10.0, abs=0.01)


def test_keys_are_independent() -> None:
    t = FakeTime()
    limiter = make([Rate(1, 1000)], t)
    take(limiter, "a", None)
    take(limiter, "b", None)
    assert t.sleeps == []


def test_wait_past_deadline_raises_at_once_with_retry_after() -> None:
    t = FakeTime()
    limiter = make([Rate(2, 1000)], t)
    take(limiter, "k", None)
    take(limiter, "k", None)
    t.now += 0.25
    with pytest.raises(RateLimitExceeded) as info:
        take(limiter, "k", deadline=t.now + 0.5)
    assert t.sleeps == []  # fail fast: no sleeping the whole max_wait first
    assert info.value.key == "k"
    assert info.value.retry_after == pytest.approx(0.75, abs=0.01)


def test_wait_within_deadline_sleeps() -> None:
    t = FakeTime()
    limiter = make([Rate(1, 1000)], t)
    take(limiter, "k", None)
    waited = take(limiter, "k", deadline=t.now + 2).waited
    assert waited == pytest.approx(1.0, abs=0.01)


def test_pause_is_reported_until_it_ends() -> None:
    t = FakeTime()
    limiter = make([Rate(100, 1000)], t)
    limiter.pause("k", 3.0)
    limiter.pause("k", 1.0)  # a shorter pause never shortens a longer one
    assert limiter.paused_for("k") == pytest.approx(3.0)
    assert limiter.paused_for("other") == 0.0
    t.now += 3.5
    assert limiter.paused_for("k") == 0.0


def test_idle_buckets_are_swept() -> None:
    t = FakeTime()
    limiter = make([Rate(5, 1000)], t)
    for i in range(100):
        take(limiter, f"host{i}", None)
    assert limiter.bucket_count() == 100
    t.now += 11
    take(limiter, "fresh", None)
    assert limiter.bucket_count() == 1


def test_margin_widens_every_window() -> None:
    t = FakeTime()
    limiter = KeyedLimiter([Rate(1, 1000)], margin=0.05, clock=t.clock, sleep=t.sleep)
    take(limiter, "k", None)
    take(limiter, "k", None)
    assert sum(t.sleeps) == pytest.approx(1.05, abs=0.005)


def test_zero_deadline_with_capacity_never_denies_under_threads() -> None:
    # pyrate-limiter's non-blocking acquire denies falsely under lock contention;
    # ours takes a short lock instead, so spare capacity is always granted.
    limiter = KeyedLimiter([Rate(10_000, 1000)])
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(200):
            try:
                import time

                take(limiter, "k", deadline=time.monotonic())
            except RateLimitExceeded as exc:  # pragma: no cover - the failure case
                errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []


def test_a_token_not_yet_sent_counts_as_sent_now_however_long_it_waits() -> None:
    # A thread holding its token for 5 s (GIL, TLS handshake, proxy) before sending:
    # the server counts the request when it arrives, 5 s later, so the token must
    # still count then, and until it is sent.
    t = FakeTime()
    limiter = KeyedLimiter([Rate(1, 1000)], arrival=0.01, clock=t.clock, sleep=t.sleep)
    slow = limiter.acquire("k", None)
    t.now += 5.0
    sent_at = t.now + 0.25

    def sleep(seconds: float) -> None:
        t.sleep(seconds)
        if slow.sent is None and t.now >= sent_at:
            slow.sent = sent_at  # it leaves while the other thread waits
            limiter.settle(slow)

    limiter.sleep = sleep
    start = t.now
    take(limiter, "k")
    # Not before the slow request's send (+ 10 ms) has left the window.
    assert t.now - start >= 1.26 - 1e-9


def answered_after(limiter: KeyedLimiter, t: FakeTime, latency: float) -> None:
    """One request to "k" sent now and answered ``latency`` later."""
    token = limiter.acquire("k", None)
    token.sent = t.now
    t.now += latency
    token.answered = t.now
    limiter.settle(token)


def test_a_token_is_dated_by_its_send_plus_the_arrival_margin() -> None:
    t = FakeTime()
    limiter = KeyedLimiter([Rate(2, 1000)], arrival=0.01, clock=t.clock, sleep=t.sleep)
    answered_after(limiter, t, 0.5)  # a server that takes 500 ms to answer
    t.now += 5.0
    token = limiter.acquire("k", None)
    t.now += 3.0  # 3 s of local delay before the send
    token.sent = t.now
    t.now += 0.5  # as slow as usual: its latency is not charged
    token.answered = t.now
    limiter.settle(token)
    take(limiter, "k")
    start = t.now
    take(limiter, "k")
    assert t.now - start == pytest.approx(0.51)  # dated send + 10 ms, not response


def test_the_first_answer_of_a_key_dates_its_token() -> None:
    t = FakeTime()
    limiter = KeyedLimiter([Rate(1, 1000)], arrival=0.01, clock=t.clock, sleep=t.sleep)
    answered_after(limiter, t, 0.5)  # nothing known yet of this server
    start = t.now
    take(limiter, "k")
    assert t.now - start == pytest.approx(1.0)


def test_an_answer_slower_than_usual_moves_the_date_by_the_excess() -> None:
    # The server usually answers in 2 ms; this answer took 40 ms: the 38 ms may have
    # been spent before the server counted the request (a server thread waiting for a
    # core), so the token is dated that much later than send + margin.
    t = FakeTime()
    limiter = KeyedLimiter([Rate(3, 1000)], arrival=0.01, clock=t.clock, sleep=t.sleep)
    for _ in range(2):
        answered_after(limiter, t, 0.002)
        t.now += 2.0
    answered_after(limiter, t, 0.040)
    sent = t.now - 0.040
    take(limiter, "k")
    take(limiter, "k")
    take(limiter, "k")
    assert t.now == pytest.approx(sent + 0.040 + 1.0)  # dated by the answer, not send + 10 ms


def test_a_token_is_never_dated_after_its_response() -> None:
    t = FakeTime()
    limiter = KeyedLimiter([Rate(1, 1000)], arrival=0.05, clock=t.clock, sleep=t.sleep)
    token = limiter.acquire("k", None)
    token.sent = t.now
    t.now += 0.002  # the response came back 2 ms after the send
    limiter.settle(token)
    start = t.now
    take(limiter, "k")
    assert t.now - start == pytest.approx(1.0)


def test_a_sent_token_counts_from_its_send_before_its_response() -> None:
    t = FakeTime()
    limiter = KeyedLimiter([Rate(1, 1000)], arrival=0.01, clock=t.clock, sleep=t.sleep)
    token = limiter.acquire("k", None)
    t.now += 2.0
    token.sent = t.now  # sent after 2 s, response not yet in
    t.now += 0.3
    start = t.now
    other = limiter.acquire("k", None)
    assert t.now - start == pytest.approx(0.71)  # until send + 10 ms + 1 s
    limiter.settle(token)
    limiter.settle(other)


def test_unsettled_tokens_keep_their_bucket_from_the_sweep() -> None:
    t = FakeTime()
    limiter = make([Rate(1, 1000)], t)
    token = limiter.acquire("k", None)
    t.now += 20
    take(limiter, "other")
    assert limiter.bucket_count() == 2
    token.sent = t.now
    limiter.settle(token)
    t.now += 20
    take(limiter, "other")
    assert limiter.bucket_count() == 1

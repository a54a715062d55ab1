"""Adaptive rate: CUBIC arithmetic with an injected clock, and a coarse run on the wire."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

import syncfetch
from syncfetch._adaptive import AdaptiveLimiter
from tests._server import ScriptedServer


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def make(ceiling: float | None = None, **kw: float) -> tuple[AdaptiveLimiter, Clock]:
    clock = Clock()
    return AdaptiveLimiter(syncfetch.Adaptive(**kw), ceiling, clock, clock.sleep), clock


def test_paces_evenly_at_the_probe_rate() -> None:
    limiter, _ = make(probe=4)
    sends = [limiter.acquire("k", None)[1] for _ in range(5)]
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(sends)]
    # The first send may use the 50 ms of burst credit a new key starts with.
    assert gaps[0] == pytest.approx(0.2) and gaps[1:] == [0.25] * 3


def test_throttle_cuts_by_beta_once_per_hold() -> None:
    limiter, clock = make(ceiling=20)
    for _ in range(10):
        limiter.acquire("k", None)
    limiter.on_response("k", clock.now, throttled=True)
    rate = limiter.rate("k")
    assert rate == pytest.approx(0.7 * 20, rel=0.01)
    # Throttles for requests sent within the hold describe the old rate: ignored.
    limiter.on_response("k", clock.now + 0.5, throttled=True)
    assert limiter.rate("k") == rate


def test_grows_back_along_the_cubic_and_never_passes_the_ceiling() -> None:
    limiter, clock = make(ceiling=20)
    for _ in range(40):
        limiter.acquire("k", None)  # measured rate about 20/s
    limiter.on_response("k", clock.now, throttled=True)
    low = limiter.rate("k") or 0
    rates = []
    for _ in range(6):
        for _ in range(10):
            limiter.acquire("k", None)
        limiter.on_response("k", clock.now - 0.01, throttled=False)
        rates.append(limiter.rate("k") or 0)
    assert rates == sorted(rates) and rates[0] > low
    assert max(rates) <= 20


def test_floor_holds() -> None:
    limiter, clock = make(probe=1, floor=0.8)
    for _ in range(5):
        limiter.acquire("k", None)
        limiter.on_response("k", clock.now, throttled=True)
        clock.now += 2
    assert limiter.rate("k") == 0.8


def test_fail_fast_when_the_pace_is_too_slow() -> None:
    limiter, clock = make(probe=1)
    limiter.acquire("k", None)
    with pytest.raises(syncfetch.RateLimitExceeded) as info:
        limiter.acquire("k", clock.now + 0.5)
    assert info.value.retry_after == pytest.approx(1.0, abs=0.06)


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="beta"):
        syncfetch.Adaptive(beta=1.5)
    with pytest.raises(ValueError, match="adaptive"):
        syncfetch.Session(adaptive="yes")  # type: ignore[arg-type]


def test_follows_an_unknown_server_limit(server: ScriptedServer) -> None:
    # Coarse on purpose (a loaded 2-core machine): the benchmark holds the tight figures.
    limit = 20
    server.limit([(limit, 1.0)])
    policy = syncfetch.RetryPolicy(retries=0, respect_retry_after=False)
    session = syncfetch.Session(adaptive=True, max_concurrency=16, retry=policy)
    start = time.monotonic()
    stop = start + 12

    def offer() -> None:
        while time.monotonic() < stop:
            session.get(server.url)

    threads = [threading.Thread(target=offer) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    session.close()
    late = [r for r in server.records if r.t >= start + 5 and r.t < start + 12]
    ok = sum(r.status == 200 for r in late)
    throttled = sum(r.status == 429 for r in late)
    assert throttled <= 0.10 * len(late)
    assert ok >= 0.75 * limit * 7


def test_fail_fast_session_with_adaptive_grants_spare_capacity(server: ScriptedServer) -> None:
    with syncfetch.Session("100/s", adaptive=True, max_wait=0) as s:
        assert [s.get(server.url).status_code for _ in range(3)] == [200] * 3

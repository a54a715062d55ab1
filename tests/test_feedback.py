"""Listening to the server: cooldowns and rate-limit headers (the retry budget: test_budget.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

import syncfetch
from syncfetch._feedback import is_throttle, quota_wait, reset_delay, server_wait
from tests._server import ScriptedServer, Step, http_date

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"RateLimit": '"default";r=0;t=3'}, 3.0),
        ({"RateLimit": '"default";r=4;t=3'}, None),
        ({"RateLimit": '"burst";r=5;t=1, "daily";r=0;t=3600'}, 3600.0),
        ({"RateLimit-Remaining": "0", "RateLimit-Reset": "12"}, 12.0),
        ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) + 30)}, 30.0),
        ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW * 1000) + 5000)}, 5.0),
        ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "2.5"}, 2.5),
        ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "45"}, 45.0),
        ({"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": "45"}, None),
        ({"X-RateLimit-Remaining": "zero", "X-RateLimit-Reset": "45"}, None),
        ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "soon"}, None),
        ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "-5"}, None),
        ({"RateLimit": "garbage;;;=", "X-RateLimit-Remaining": "0"}, None),
        ({}, None),
    ],
)
def test_quota_headers(headers: dict[str, str], wait: float | None) -> None:
    got = quota_wait(headers, now=NOW)
    assert got == (None if wait is None else pytest.approx(wait, abs=0.01))


def test_reset_magnitudes() -> None:
    assert reset_delay(str(int(NOW) - 10), now=NOW) == 0.0  # a reset in the past: no wait
    assert reset_delay("1e400", now=NOW) is None


def test_throttle_signals() -> None:
    assert is_throttle(429, {})
    assert is_throttle(403, {"X-RateLimit-Remaining": "0"})
    assert not is_throttle(403, {})
    assert server_wait(503, {"Retry-After": "4"}, retry_after=True, quota=True)[0] == 4.0
    assert server_wait(500, {"Retry-After": "4"}, retry_after=True, quota=True)[0] is None
    assert server_wait(429, {"Retry-After": "4"}, retry_after=False, quota=True)[0] is None


@pytest.fixture
def real_waits() -> Iterator[None]:
    """Server-requested pauses are skipped in testing mode; these tests time them."""
    syncfetch.set_testing(False)
    yield
    syncfetch.set_testing(True)


def gap_after(server: ScriptedServer, status: int) -> tuple[float, list[float]]:
    """Arrival time of the first response with ``status``, and every arrival after it."""
    records = server.records
    t0 = next(r.t for r in records if r.status == status)
    return t0, [r.t - t0 for r in records if r.t > t0]


@pytest.mark.parametrize("form", ["seconds", "http-date"])
@pytest.mark.usefixtures("real_waits")
def test_retry_after_pauses_every_thread(
    server: ScriptedServer, form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = "2" if form == "seconds" else (lambda: http_date(2))
    server.script("/x", Step(), Step(status=429, headers={"Retry-After": value}), Step())
    url = server.url_for("/x")
    with syncfetch.Session(max_concurrency=8) as s, ThreadPoolExecutor(8) as pool:
        # Each attempt checks the pause once before its slot and token: note when each
        # check that let an attempt through began, and when the pause was in place.
        limiter = s._pipeline.limiter
        passed: list[float] = []
        paused_at: list[float] = []
        real_paused_for, real_pause = limiter.paused_for, limiter.pause

        def paused_for(key: str, deadline: float | None = None) -> float:
            began = time.monotonic()
            left = real_paused_for(key, deadline)
            if left <= 0:
                passed.append(began)
            return left

        def pause(key: str, seconds: float) -> None:
            real_pause(key, seconds)
            paused_at.append(time.monotonic())

        monkeypatch.setattr(limiter, "paused_for", paused_for)
        monkeypatch.setattr(limiter, "pause", pause)
        list(pool.map(lambda _: [s.get(url) for _ in range(6)], range(8)))
        assert s.stats.cooldowns == 1 and s.stats.cooldown_wait > 0
    _, after = gap_after(server, 429)
    quiet = 2.0 if form == "seconds" else 1.0  # an HTTP date has whole-second resolution
    # Attempts let through before the pause was in place may land after the 429, as late
    # as their thread gets to send them (on a loaded machine, any time: a fixed bound
    # such as 0.3 s failed there); every other one waits out the pause. So no more may
    # land in the quiet time than were let through before the pause and had not arrived
    # by the 429 (the 429 itself and the one before it).
    in_flight = sum(1 for began in passed if began < paused_at[0]) - 2
    assert len([t for t in after if t < quiet - 0.05]) <= in_flight
    assert len(after) >= 40  # traffic resumed: 48 calls + 1 retry in all


@pytest.mark.usefixtures("real_waits")
def test_spent_quota_holds_the_key_not_other_hosts(server: ScriptedServer) -> None:
    other = ScriptedServer().start()
    try:
        server.script("/q", Step(headers={"RateLimit": '"default";r=0;t=3'}), Step())
        with syncfetch.Session() as s:
            s.get(server.url_for("/q"))
            start = time.monotonic()
            s.get(other.url_for("/free"))
            assert time.monotonic() - start < 2.5  # another host: not held for the 3 s
            s.get(server.url_for("/q"))
        t = server.times("/q")
        assert t[1] - t[0] >= 2.9
    finally:
        other.stop()


@pytest.mark.usefixtures("real_waits")
def test_epoch_reset_holds_the_key(server: ScriptedServer) -> None:
    server.script(
        "/gh",
        Step(
            headers={
                "X-RateLimit-Remaining": lambda: "0",
                "X-RateLimit-Reset": lambda: str(int(time.time()) + 3),
            }
        ),
        Step(),
    )
    with syncfetch.Session() as s:
        s.get(server.url_for("/gh"))
        s.get(server.url_for("/gh"))
    t = server.times("/gh")
    assert t[1] - t[0] >= 2.0  # epoch seconds: up to one second of rounding


def test_headers_can_be_ignored(server: ScriptedServer) -> None:
    server.script("/q", Step(headers={"RateLimit": '"default";r=0;t=30'}))
    with syncfetch.Session(rate_limit_headers=False) as s:
        s.get(server.url_for("/q"))
        start = time.monotonic()
        s.get(server.url_for("/q"))
        assert time.monotonic() - start < 10 and s.stats.cooldowns == 0  # not the 30 s


def test_a_pause_beyond_the_caps_fails_fast(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.script("/q", Step(headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "30"}))
    caplog.set_level(logging.INFO, "syncfetch")
    with syncfetch.Session(max_wait=1) as s:
        s.get(server.url_for("/q"))
        start = time.monotonic()
        with pytest.raises(syncfetch.RateLimitExceeded) as info:
            s.get(server.url_for("/q"))
        assert time.monotonic() - start < 5  # not the 30 s pause (slack for a busy box)
    assert 25 < (info.value.retry_after or 0) <= 30
    assert any(getattr(r, "syncfetch_pause", 0) == 30 for r in caplog.records)
    assert server.count("/q") == 1


@pytest.mark.usefixtures("real_waits")
def test_github_style_403_is_retried_after_the_reset(server: ScriptedServer) -> None:
    server.script(
        "/gh",
        Step(status=403, headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1"}),
        Step(),
    )
    with syncfetch.Session() as s:
        assert s.get(server.url_for("/gh")).status_code == 200
    t = server.times("/gh")
    assert len(t) == 2 and t[1] - t[0] >= 0.95


def test_a_pause_beyond_retry_after_max_is_capped_then_the_server_is_probed(
    server: ScriptedServer,
) -> None:
    server.script("/q", Step(headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "120"}))
    with syncfetch.Session(retry=syncfetch.RetryPolicy(retry_after_max=1)) as s:
        s.get(server.url_for("/q"))
        assert 0 < s._pipeline.limiter.paused_for(f"http://127.0.0.1:{server.port}") <= 1
        # The capped pause is waited out (skipped in testing mode), then the next call
        # asks the server again.
        s.get(server.url_for("/q"))
    assert server.count("/q") == 2


def test_a_pause_longer_than_max_wait_fails_other_calls_fast(server: ScriptedServer) -> None:
    server.script("/q", Step(headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "120"}))
    with syncfetch.Session(max_wait=10) as s:
        s.get(server.url_for("/q"))
        with pytest.raises(syncfetch.RateLimitExceeded) as info:
            s.get(server.url_for("/q"))
    assert 50 < (info.value.retry_after or 0) <= 60  # capped at retry_after_max (60)
    assert server.count("/q") == 1

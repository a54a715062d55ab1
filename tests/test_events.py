"""``on_event`` hooks and per-key stats (``session.stats.by_key``)."""

from __future__ import annotations

import dataclasses
import logging
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import responses
from pyrate_limiter import Rate

import syncfetch
from syncfetch import Event

URL = "http://api.test/items"
SECRET_URL = "http://user:pw@api.test/items?api_key=s3cret&page=2"
KEY = "http://api.test:80"


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def kinds(events: list[Event], *skip: str) -> list[str]:
    return [e.kind for e in events if e.kind not in skip]


def test_no_hook_means_no_event_machinery(mocked: responses.RequestsMock) -> None:
    mocked.get(URL)
    with syncfetch.Session() as s:
        assert s._pipeline.events is None
        s.get(URL)
        hook = lambda e: None  # noqa: E731
        s.add_event_hook(hook)
        assert s._pipeline.events is not None
        s.remove_event_hook(hook)
        assert s._pipeline.events is None


def test_retried_call_tells_each_attempt_response_and_retry(
    mocked: responses.RequestsMock,
) -> None:
    mocked.get(re.compile(r"http://(user:pw@)?api\.test/items.*"), status=503)
    mocked.get(re.compile(r"http://(user:pw@)?api\.test/items.*"), status=200)
    events: list[Event] = []
    policy = syncfetch.RetryPolicy(retries=2, jitter=False)
    with syncfetch.Session(retry=policy, on_event=events.append) as s:
        assert s.get(SECRET_URL).status_code == 200
    assert kinds(events, "wait") == [
        "call_start",
        "attempt",
        "response",
        "retry",
        "attempt",
        "response",
        "call_end",
    ]
    for e in events:
        assert e.key == KEY
        assert e.url == "http://api.test/items?api_key=***&page=***"
        assert e.method == "GET"
        assert e.call == events[0].call != 0
    attempts = [e for e in events if e.kind == "attempt"]
    assert [e.attempt for e in attempts] == [1, 2]
    responses_ = [e for e in events if e.kind == "response"]
    assert [e.status for e in responses_] == [503, 200]
    assert all(e.seconds is not None and e.seconds >= 0 for e in responses_)
    retry = next(e for e in events if e.kind == "retry")
    assert (retry.reason, retry.attempt, retry.seconds) == ("503", 1, policy.backoff_base)
    end = events[-1]
    assert (end.status, end.attempt, end.error) == (200, 2, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        end.kind = "x"  # type: ignore[misc]


def test_giveup_and_error_events(mocked: responses.RequestsMock) -> None:
    mocked.get(URL, body=requests.ConnectionError("refused"))
    mocked.get(URL, body=requests.ConnectionError("refused"))
    events: list[Event] = []
    with (
        syncfetch.Session(retry=1, on_event=[events.append]) as s,
        pytest.raises(requests.ConnectionError),
    ):
        s.get(URL)
    assert kinds(events, "wait") == [
        "call_start",
        "attempt",
        "error",
        "retry",
        "attempt",
        "error",
        "giveup",
        "call_end",
    ]
    assert events[2].error == "ConnectionError"
    giveup = events[-2]
    assert giveup.reason == "retries exhausted" and giveup.error == "ConnectionError"
    assert events[-1].error == "ConnectionError"


def test_pause_then_wait_for_it(mocked: responses.RequestsMock) -> None:
    mocked.get(URL, status=429, headers={"Retry-After": "30"})
    mocked.get(URL, status=200)
    events: list[Event] = []
    with syncfetch.Session(retry=0, on_event=events.append) as s:
        assert s.get(URL).status_code == 429
        pause = next(e for e in events if e.kind == "pause")
        assert pause.seconds == 30 and pause.reason and "Retry-After" in pause.reason
        by_key = s.stats.by_key[KEY]
        assert 29 < by_key.paused_for <= 30 and by_key.cooldowns == 1
        s.get(URL)  # the test mode skips the pause's sleep, not its event
    waits = [e for e in events if e.kind == "wait"]
    assert [w.wait for w in waits] == ["pause"] and waits[0].seconds is not None


def test_rate_limited_and_token_wait(mocked: responses.RequestsMock) -> None:
    mocked.get(URL)
    events: list[Event] = []
    with syncfetch.Session(Rate(1, 200), on_event=events.append) as s:
        s.get(URL)
        s.get(URL)  # waits about 0.2 s for its token
        waits = [e for e in events if e.kind == "wait"]
        assert [w.wait for w in waits] == ["token"] and waits[0].seconds is not None
        assert waits[0].seconds > 0.1
    with (
        syncfetch.Session(Rate(1, 10_000), max_wait=0, on_event=events.append) as s,
        pytest.raises(syncfetch.RateLimitExceeded),
    ):
        s.get(URL)
        s.get(URL)
    assert events[-2].kind == "rate_limited" and events[-2].error == "RateLimitExceeded"
    assert events[-1].kind == "call_end" and events[-1].error == "RateLimitExceeded"


def test_budget_spent(mocked: responses.RequestsMock) -> None:
    mocked.get(URL, status=503)
    events: list[Event] = []
    budget = syncfetch.RetryBudget(reserve=0)
    policy = syncfetch.RetryPolicy(retries=3, budget=budget)
    with syncfetch.Session(retry=policy, on_event=events.append) as s:
        assert s.get(URL).status_code == 503
        assert s.stats.by_key[KEY].budget_exhausted == 1
    spent = next(e for e in events if e.kind == "budget_spent")
    assert spent.url == URL and spent.attempt == 1
    assert events[-2].kind == "giveup" and events[-2].reason == "retry budget spent"


def test_a_raising_hook_is_logged_once_and_breaks_nothing(
    mocked: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    mocked.get(URL)
    seen: list[str] = []

    def bad(event: Event) -> None:
        raise RuntimeError("boom")

    with syncfetch.Session(on_event=[bad, lambda e: seen.append(e.kind)]) as s:
        for _ in range(3):
            assert s.get(URL).status_code == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "on_event hook" in errors[0].getMessage()
    assert seen.count("call_end") == 3


def test_bad_on_event_is_refused() -> None:
    with pytest.raises(TypeError, match="on_event"):
        syncfetch.Session(on_event=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="on_event"):
        syncfetch.Session(on_event=[print, 42])  # type: ignore[list-item]


def test_map_items_are_calls_whose_attempts_share_the_id(
    mocked: responses.RequestsMock,
) -> None:
    mocked.get(URL + "/a", status=503)
    mocked.get(URL + "/a", status=200)
    mocked.get(URL + "/b", status=200)
    events: list[Event] = []
    lock = threading.Lock()

    def hook(e: Event) -> None:
        with lock:
            events.append(e)

    with syncfetch.Session(retry=2, on_event=hook) as s:
        results = list(s.map([URL + "/a", URL + "/b", 42]))  # type: ignore[list-item]
    assert [r.ok for r in results] == [True, True, False]
    ends = {e.call: e for e in events if e.kind == "call_end"}
    assert len(ends) == 3
    for call, end in ends.items():
        attempts = [e for e in events if e.kind == "attempt" and e.call == call]
        assert len(attempts) == end.attempt
    assert sorted(e.attempt for e in ends.values()) == [0, 1, 2]
    assert next(e for e in ends.values() if e.attempt == 0).error == "TypeError"


def test_by_key_splits_the_totals(mocked: responses.RequestsMock) -> None:
    mocked.get("http://a.test/x", status=200)
    mocked.get("http://b.test/x", status=503)
    with syncfetch.Session(retry=1) as s:
        list(s.map(["http://a.test/x"] * 5 + ["http://b.test/x"] * 3))
        stats = s.stats
    a, b = stats.by_key["http://a.test:80"], stats.by_key["http://b.test:80"]
    assert (a.requests, a.attempts, a.retries, dict(a.statuses)) == (5, 5, 0, {200: 5})
    assert (b.requests, b.attempts, b.retries, b.giveups) == (3, 6, 3, 3)
    assert dict(b.statuses) == {503: 6}
    assert stats.attempts == 11 and stats.giveups == 3 and dict(stats.statuses) == {200: 5, 503: 6}
    assert a.rate is None and a.paused_for == 0


def test_by_key_shows_the_adaptive_rate(mocked: responses.RequestsMock) -> None:
    mocked.get(URL)
    with syncfetch.Session("50/s", adaptive=True) as s:
        s.get(URL)
        rate = s.stats.by_key[KEY].rate
    assert rate is not None and 0 < rate <= 50


def test_by_key_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from syncfetch import _stats

    monkeypatch.setattr(_stats, "MAX_KEYS", 3)
    recorder = _stats.StatsRecorder()
    for i in range(5):
        recorder.add(f"k{i}", requests=1)
    snap = recorder.snapshot()
    assert set(snap.by_key) == {"k0", "k1", "k2", "(other)"}
    assert snap.by_key["(other)"].requests == 2 and snap.requests == 5


@pytest.mark.slow
def test_backend_down_and_up(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    events: list[Event] = []
    url = "http://api.test/x"
    with responses.RequestsMock() as mocked:
        mocked.get(url)
        with syncfetch.Session("100/s", store=f"sqlite:///{path}", on_event=events.append) as s:
            s.get(url)
            blocker = sqlite3.connect(path, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            try:
                with pytest.raises(syncfetch.BackendUnavailable):
                    s.get(url)
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            s.get(url)
    backend = [e for e in events if e.kind.startswith("backend")]
    assert [e.kind for e in backend] == ["backend_down", "backend_up"]
    assert backend[0].reason and "sqlite" in backend[0].reason and backend[0].url == ""


def test_exception_reprs_show_key_and_wait_never_a_secret() -> None:
    exc = syncfetch.RateLimitExceeded(
        "no token for http://u:pw@api.test/x?api_key=s3cret", key=KEY, retry_after=1.5
    )
    text = repr(exc)
    assert text == (
        "RateLimitExceeded('no token for http://api.test/x?api_key=***', "
        "key='http://api.test:80', retry_after=1.5)"
    )
    for cls in (syncfetch.DeadlineExceeded, syncfetch.BackendUnavailable, syncfetch.SessionClosed):
        text = repr(cls("failed on https://user:pw@h.test/?token=abc"))
        assert text == f"{cls.__name__}('failed on https://h.test/?token=***')"


def test_redirect_hops_are_attempts_of_one_call(mocked: responses.RequestsMock) -> None:
    mocked.get(URL, status=302, headers={"Location": "http://other.test/x?token=abc"})
    mocked.get("http://other.test/x", status=200)
    events: list[Event] = []
    with syncfetch.Session(on_event=events.append) as s:
        assert s.get(URL).status_code == 200
    attempts = [e for e in events if e.kind == "attempt"]
    assert [(e.attempt, e.key, e.url) for e in attempts] == [
        (1, KEY, "http://api.test/items"),
        (2, "http://other.test:80", "http://other.test/x?token=***"),
    ]
    assert len({e.call for e in events}) == 1
    assert kinds(events).count("call_start") == 1 and events[-1].attempt == 2


def test_by_key_adds_up_across_threads(mocked: responses.RequestsMock) -> None:
    hosts = [f"http://h{i}.test/" for i in range(4)]
    for host in hosts:
        mocked.get(host)
    seen: list[int] = []
    with syncfetch.Session(max_concurrency=8, on_event=lambda e: seen.append(1)) as s:
        results = list(s.map(hosts * 50, ordered=False))
        stats = s.stats
    assert len(results) == 200 and all(r.ok for r in results)
    assert stats.attempts == 200 and seen
    assert {k: v.attempts for k, v in stats.by_key.items()} == {
        f"http://h{i}.test:80": 50 for i in range(4)
    }
    assert sum(v.statuses[200] for v in stats.by_key.values()) == stats.statuses[200] == 200

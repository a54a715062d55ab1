"""``class CachedSession(requests_cache.CacheMixin, syncfetch.Session)``, against the real
requests-cache and a real server: hits never reach the pipeline (no slot, no token, no
event), misses and revalidations go through it exactly once, every syncfetch argument can
still be set (the limit store is ``store=``, requests-cache's cache is ``backend=``)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests_cache

import syncfetch
from syncfetch import Event
from syncfetch._stores.sqlite import SQLiteLimiter
from tests._server import ScriptedServer, Step


class CachedSession(requests_cache.CacheMixin, syncfetch.Session):  # type: ignore[misc]
    """The recipe of docs/web-apps.md."""


def _cache(kind: str, tmp_path: Path) -> Any:
    if kind == "memory":
        return "memory"
    # An instance, not "sqlite": requests-cache hands a name's backend every keyword
    # argument it does not know, and sqlite3.connect() would get syncfetch's timeout=.
    return requests_cache.SQLiteCache(str(tmp_path / "http_cache.sqlite"))


def _store(kind: str, tmp_path: Path) -> str:
    return "memory" if kind == "memory" else f"sqlite:///{tmp_path / 'limits.db'}"


def _attempts(events: list[Event]) -> int:
    return sum(e.kind == "attempt" for e in events)


def _calls(events: list[Event]) -> int:
    return sum(e.kind == "call_start" for e in events)


@pytest.mark.parametrize("store", ["memory", "sqlite"])
@pytest.mark.parametrize("cache", ["memory", "sqlite"])
def test_hits_take_no_token_and_a_miss_pays_once(
    server: ScriptedServer, tmp_path: Path, cache: str, store: str
) -> None:
    events: list[Event] = []
    with CachedSession(
        backend=_cache(cache, tmp_path),
        limits="1/minute",
        max_wait=0,
        store=_store(store, tmp_path),
        on_event=events.append,
    ) as s:
        first = s.get(server.url_for("/item"))
        assert (first.status_code, first.from_cache) == (200, False)
        for _ in range(5):  # the minute's one token is spent: only hits can succeed
            hit = s.get(server.url_for("/item"))
            assert (hit.status_code, hit.text, hit.from_cache) == (200, "ok", True)
        assert server.count() == 1
        assert (s.stats.requests, s.stats.attempts) == (1, 1)
        assert (_calls(events), _attempts(events)) == (1, 1)
        # The limit binds: a miss finds no token.
        with pytest.raises(syncfetch.RateLimitExceeded):
            s.get(server.url_for("/other"))
        assert server.count() == 1


def test_a_hit_takes_no_slot(server: ScriptedServer) -> None:
    # The holder keeps the one slot for 4 s: time for the two calls below on a busy
    # machine (1 s was once too short while both cores ran other suites).
    server.script("/slow", Step(delay=4.0))
    with CachedSession(backend="memory", max_concurrency=1, max_wait=0) as s:
        s.get(server.url_for("/cached"))
        holder = threading.Thread(target=s.get, args=(server.url_for("/slow"),))
        holder.start()
        try:
            deadline = time.monotonic() + 5
            while server.in_flight < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert server.in_flight == 1  # the one slot is taken
            assert s.get(server.url_for("/cached")).from_cache
            with pytest.raises(syncfetch.RateLimitExceeded):  # a miss needs the slot
                s.get(server.url_for("/miss"))
        finally:
            holder.join(10)
    assert server.count("/miss") == 0


def test_a_miss_goes_through_the_pipeline_once_with_its_retries_and_hops(
    server: ScriptedServer,
) -> None:
    server.script("/flaky", Step(status=503), Step(body=b"fine"))
    server.script("/moved", Step(status=302, headers={"Location": "/flaky"}))
    events: list[Event] = []
    with CachedSession(backend="memory", retry=2, on_event=events.append) as s:
        resp = s.get(server.url_for("/moved"))
        assert (resp.status_code, resp.text) == (200, "fine")
        # One call: the redirect hop, the 503 and its retry each paid an attempt.
        assert (_calls(events), _attempts(events)) == (1, 3)
        assert (s.stats.requests, s.stats.attempts, s.stats.retries) == (2, 3, 1)
        assert s.get(server.url_for("/moved")).from_cache
        assert (_calls(events), _attempts(events)) == (1, 3)
    assert server.statuses() == [302, 503, 200]


@pytest.mark.slow
def test_an_expired_response_is_fetched_again_and_pays(server: ScriptedServer) -> None:
    with CachedSession(backend="memory", expire_after=timedelta(seconds=1)) as s:
        assert not s.get(server.url_for("/x")).from_cache
        assert s.get(server.url_for("/x")).from_cache
        time.sleep(1.2)
        assert not s.get(server.url_for("/x")).from_cache
        assert s.get(server.url_for("/x")).from_cache
        assert (server.count(), s.stats.attempts) == (2, 2)


@pytest.mark.parametrize("cache", ["memory", "sqlite"])
def test_a_revalidation_pays_a_token_and_a_fresh_hit_does_not(
    server: ScriptedServer, tmp_path: Path, cache: str
) -> None:
    server.script(
        "/v",
        Step(headers={"ETag": '"v1"', "Cache-Control": "max-age=0"}, body=b"v1"),
        Step(status=304, headers={"ETag": '"v1"', "Cache-Control": "max-age=60"}, body=b""),
    )
    with CachedSession(backend=_cache(cache, tmp_path), cache_control=True, limits="2/minute") as s:
        assert s.get(server.url_for("/v")).text == "v1"
        stale = s.get(server.url_for("/v"))  # stale at once: revalidated, 304
        assert (stale.status_code, stale.text, stale.from_cache) == (200, "v1", True)
        assert s.stats.attempts == 2
        s.max_wait = 0  # both tokens of the minute are spent
        fresh = s.get(server.url_for("/v"))
        assert (fresh.text, fresh.from_cache) == ("v1", True)
        assert s.stats.attempts == 2
    assert server.statuses() == [200, 304]
    assert server.records[1].headers.get("If-None-Match") == '"v1"'


def test_every_syncfetch_argument_can_be_set(tmp_path: Path) -> None:
    events: list[Event] = []
    adaptive = syncfetch.Adaptive()
    store = _store("sqlite", tmp_path)
    with CachedSession(
        backend=_cache("sqlite", tmp_path),
        expire_after=60,
        limits="5/second",
        per_host=False,
        max_concurrency=3,
        retry=syncfetch.RetryPolicy(retries=1),
        timeout=(1.5, 4.0),
        max_wait=2.5,
        max_workers=2,
        store=store,
        on_backend_error="fallback",
        rate_limit_headers=False,
        adaptive=adaptive,
        on_event=events.append,
        arrival_margin=0.01,
    ) as s:
        assert isinstance(s.cache, requests_cache.SQLiteCache)
        assert s.settings.expire_after == 60
        assert [(r.limit, r.interval) for r in s.limits] == [(5, 1000)]
        assert s.per_host is False
        assert (s.max_concurrency, s.max_workers) == (3, 2)
        assert s.retry.retries == 1
        assert (s.timeout, s.max_wait) == ((1.5, 4.0), 2.5)
        assert (s.store, s.on_backend_error) == (store, "fallback")
        assert (s.rate_limit_headers, s.adaptive, s.arrival_margin) == (False, adaptive, 0.01)
        assert isinstance(s._pipeline.limiter, SQLiteLimiter)


def test_none_valued_arguments_are_dropped_by_requests_cache_so_assign_them() -> None:
    # requests-cache passes a custom session only the arguments that are not None.
    with CachedSession(backend="memory", timeout=None, retry=0) as s:
        assert s.timeout == syncfetch.Session().timeout  # None was dropped
        assert s.retry.retries == 0  # 0, not None, turns retries off
        s.timeout = None
        assert s.timeout is None


def test_the_old_backend_name_reaches_requests_cache_not_syncfetch() -> None:
    with CachedSession(backend="memory") as s:
        assert type(s.cache).__name__ == "BaseCache"  # requests-cache's in-memory cache
        assert s.store == "memory"


def test_map_over_cached_urls_pays_nothing(server: ScriptedServer) -> None:
    with CachedSession(backend="memory", limits="1/minute", max_wait=0) as s:
        s.get(server.url_for("/a"))
        results = list(s.map([server.url_for("/a")] * 8))
        assert [r.response.from_cache for r in results if r.response is not None] == [True] * 8
        assert s.submit("GET", server.url_for("/a")).result(5).from_cache
        assert (server.count(), s.stats.attempts) == (1, 1)


def test_close_ends_a_waiting_miss_and_closes_the_cache(
    server: ScriptedServer, tmp_path: Path
) -> None:
    cache = _cache("sqlite", tmp_path)
    s = CachedSession(backend=cache, limits="1/minute")
    s.get(server.url_for("/a"))
    errors: list[BaseException] = []

    def miss() -> None:
        try:
            s.get(server.url_for("/b"))  # waits a minute for the next token
        except BaseException as exc:
            errors.append(exc)

    waiter = threading.Thread(target=miss)
    waiter.start()
    deadline = time.monotonic() + 5
    while s.stats.requests < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    s.close()
    waiter.join(5)
    assert not waiter.is_alive()
    assert [type(e) for e in errors] == [syncfetch.SessionClosed]
    assert server.count() == 1
    # requests-cache closed its own connection too (autoclose): reopened on use.
    assert cache.responses._connection is None


def test_per_call_options_pass_through_the_mixin(server: ScriptedServer) -> None:
    server.script("/flaky", Step(status=503), Step(body=b"fine"))
    with CachedSession(backend="memory", limits="2/minute", retry=0) as s:
        assert s.get(server.url_for("/flaky"), retry=1, expire_after=60).text == "fine"
        assert s.get(server.url_for("/flaky"), max_wait=0).from_cache  # a hit: no token
        with pytest.raises(syncfetch.RateLimitExceeded):
            s.get(server.url_for("/miss"), max_wait=0)
        with pytest.raises(ValueError, match="per-call max_wait"):
            s.get(server.url_for("/flaky"), max_wait=-1)
    assert server.statuses() == [503, 200]


def test_a_background_revalidation_goes_through_the_pipeline_once(server: ScriptedServer) -> None:
    """stale_while_revalidate: the caller gets the stale copy at once, and requests-cache's
    own thread sends the refresh, a call of its own that pays its token."""
    server.script(
        "/v",
        Step(headers={"ETag": '"v1"', "Cache-Control": "max-age=0"}, body=b"v1"),
        Step(headers={"ETag": '"v2"', "Cache-Control": "max-age=60"}, body=b"v2"),
    )
    events: list[Event] = []
    with CachedSession(
        backend="memory", cache_control=True, stale_while_revalidate=True, on_event=events.append
    ) as s:
        s.get(server.url_for("/v"))
        stale = s.get(server.url_for("/v"))
        assert (stale.text, stale.from_cache) == ("v1", True)
        deadline = time.monotonic() + 5
        while s.stats.attempts < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.wait_idle()
        deadline = time.monotonic() + 5
        while s.get(server.url_for("/v")).text != "v2" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (_calls(events), _attempts(events)) == (2, 2)
    assert server.statuses() == [200, 200]

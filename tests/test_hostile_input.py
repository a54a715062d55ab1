"""Hostile servers and bad input: odd headers, huge waits, bad values, secrets in results.

Each test here failed on the code before its fix (issue 11).
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pyrate_limiter import Rate

import syncfetch
from syncfetch._feedback import quota_wait, server_wait
from syncfetch._pipeline import bucket_key
from syncfetch._rates import normalize_limits
from syncfetch._retry import parse_retry_after
from syncfetch._stores.base import MAX_PAUSE
from syncfetch._stores.memory import KeyedLimiter
from tests._redis import RedisServer, require_redis
from tests._server import ScriptedServer, Step

NOW = 1_800_000_000.0

# -- item 5: header parsers never raise; only ASCII digits count -------------------------

HUGE_DATES = [
    "Wed, 21 Oct 99999999999999999999 07:28:00 GMT",  # year
    "Wed, 99999999999999999999 Oct 2015 07:28:00 GMT",  # day
    "Wed, 21 Oct 2015 07:28:00 +99999999999999999999",  # offset
    "Wed, 21 Oct 2015 99999999999999999999:28:00 GMT",  # hour
]


@pytest.mark.parametrize("value", ["\xb2", "\u0663", "1\xb2", "\u00b9\u2070", "1_0", " \u0660 "])
def test_retry_after_counts_only_ascii_digits(value: str) -> None:
    assert parse_retry_after(value) is None


@pytest.mark.parametrize("value", HUGE_DATES)
def test_retry_after_dates_out_of_range_are_ignored(value: str) -> None:
    assert parse_retry_after(value, now=NOW) is None


def test_retry_after_huge_delays_are_finite() -> None:
    for value in ("1" * 400, str(10**30), "9" * 5000):
        wait = parse_retry_after(value)
        assert wait is not None and math.isfinite(wait) and 0 < wait <= MAX_PAUSE


@pytest.mark.parametrize("value", ["\xb2", "\u0663", "1_0", "infinity", "nan", "0x10"])
def test_quota_headers_count_only_ascii_numbers(value: str) -> None:
    assert quota_wait({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": value}, NOW) is None
    assert quota_wait({"RateLimit": f'"d";r=0;t={value}'}, NOW) is None
    # An odd "remaining" is not read as 0.
    assert quota_wait({"X-RateLimit-Remaining": value, "X-RateLimit-Reset": "5"}, NOW) is None


@pytest.mark.parametrize(
    "headers",
    [
        {"RateLimit": '"default";r=0;t=1e30'},
        {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(10**20)},
        {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "1" * 300},
        {"RateLimit-Remaining": "0", "RateLimit-Reset": "9" * 308},
    ],
)
def test_quota_waits_are_finite(headers: dict[str, str]) -> None:
    wait = quota_wait(headers, NOW)
    assert wait is not None and math.isfinite(wait) and 0 < wait <= MAX_PAUSE


@pytest.mark.parametrize("value", ["\xb2", *HUGE_DATES, str(10**30)])
def test_server_wait_never_raises(value: str) -> None:
    wait, _ = server_wait(429, {"Retry-After": value}, retry_after=True, quota=True)
    assert wait is None or (math.isfinite(wait) and 0 <= wait <= MAX_PAUSE)


# -- item 6: every server-given pause is capped at retry_after_max, on every backend ---------


@pytest.mark.parametrize("seconds", [math.inf, 1e30, 10**30, MAX_PAUSE * 10])
def test_memory_limiter_clamps_huge_pauses(seconds: float) -> None:
    limiter = KeyedLimiter([])
    limiter.pause("k", seconds)
    assert 0 < limiter.paused_for("k") <= MAX_PAUSE


@pytest.mark.parametrize("seconds", [math.nan, -1.0, -math.inf, 0.0])
def test_memory_limiter_ignores_meaningless_pauses(seconds: float) -> None:
    limiter = KeyedLimiter([])
    limiter.pause("k", seconds)
    assert limiter.paused_for("k") == 0.0


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    require_redis()
    with RedisServer() as srv:
        yield srv


@pytest.fixture(params=["memory", "sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each backend in turn: "memory", a SQLite URL, an emptied throwaway Redis server."""
    if request.param == "memory":
        return "memory"
    if request.param == "sqlite":
        return "sqlite:///" + str(tmp_path / "limits.db")
    import redis

    srv: RedisServer = request.getfixturevalue("redis_server")
    with redis.Redis.from_url(srv.url) as client:
        client.flushall()
    return srv.url


def _shared_limiter_pauses(backend: str, seconds: float) -> float:
    """Pause a key for ``seconds`` directly on a backend's limiter; the pause left."""
    with syncfetch.Session(store=backend, on_backend_error="raise") as s:
        limiter = s._pipeline.limiter
        limiter.pause("k", seconds)
        assert not getattr(limiter, "backend_down", lambda: False)()
        return limiter.paused_for("k")


@pytest.mark.parametrize("seconds", [math.inf, 1e30, 10**30])
def test_every_limiter_stores_a_huge_pause_clamped(backend: str, seconds: float) -> None:
    assert 0 < _shared_limiter_pauses(backend, seconds) <= MAX_PAUSE


@pytest.mark.parametrize("seconds", [math.nan, -1.0])
def test_every_limiter_ignores_meaningless_pauses(backend: str, seconds: float) -> None:
    assert _shared_limiter_pauses(backend, seconds) == 0.0


HUGE_WAITS = [
    (429, {"Retry-After": str(10**30)}),
    (503, {"Retry-After": "1" * 400}),
    (200, {"RateLimit": '"default";r=0;t=1e30'}),
    (200, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(10**20)}),
    (429, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "9" * 300}),
]


@pytest.mark.parametrize(("status", "headers"), HUGE_WAITS)
def test_a_huge_server_wait_is_capped_at_retry_after_max(
    server: ScriptedServer,
    backend: str,
    caplog: pytest.LogCaptureFixture,
    status: int,
    headers: dict[str, str],
) -> None:
    server.script("/h", Step(status=status, headers=headers, body=b"kept"), Step())
    policy = syncfetch.RetryPolicy(retries=0, retry_after_max=30)
    caplog.set_level(logging.INFO, "syncfetch")
    url = server.url_for("/h")
    with syncfetch.Session(retry=policy, store=backend) as s:
        r = s.get(url)
        assert (r.status_code, r.content) == (status, b"kept")  # a 200's body is not lost
        paused = s._pipeline.limiter.paused_for(bucket_key(url, True))
        assert 25 < paused <= 30
        # After the capped pause (skipped in testing mode) the next call probes the server.
        assert s.get(url).status_code == 200
    assert server.count("/h") == 2
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "backend" in r.msg]
    [pause] = [r for r in caplog.records if hasattr(r, "syncfetch_pause")]
    assert pause.syncfetch_pause == 30


# -- item 8: rates a backend cannot store are refused at construction ------------------------


@pytest.mark.parametrize(
    "limits",
    [
        f"{10**20}/second",
        f"{10**10}/s",
        "1/" + "9" * 400 + "s",  # OverflowError before
        "1/99999999999d",
        "9" * 5000 + "/s",  # int() refuses over 4300 digits: say so clearly
        Rate(10**20, 1000),
        Rate(10, 10**19),
        Rate(1.5, 1000),  # type: ignore[arg-type]
        Rate(True, 1000),
    ],
)
def test_rates_beyond_the_bounds_are_refused_at_construction(limits: Any) -> None:
    with pytest.raises(ValueError, match="invalid rate") as info:
        normalize_limits(limits)
    text = limits if isinstance(limits, str) else str(limits.limit)
    assert text[:30] in str(info.value)
    with pytest.raises(ValueError):
        syncfetch.Session(limits)


def test_rates_at_the_bounds_work_on_every_backend(server: ScriptedServer, backend: str) -> None:
    widest = [f"{10**9}/{10**12}ms", "1000000000/11574d"]
    assert [(r.limit, r.interval) for r in normalize_limits(widest[0])] == [(10**9, 10**12)]
    for limits in widest:
        with syncfetch.Session(limits, store=backend) as s:
            assert s.get(server.url_for("/x")).status_code == 200


def test_non_ascii_digits_are_not_a_rate() -> None:
    with pytest.raises(ValueError, match="invalid rate"):
        syncfetch.parse_rate("\u0661\u0660/second")


# -- item 11: no secrets in repr(Result) or str(Result); the method actually used ----------

SECRET_URL = "http://user:hunter2@127.0.0.1:{port}/items?api_key=SECRETKEY&page=2"


def _assert_no_secret(text: str) -> None:
    assert "hunter2" not in text and "SECRETKEY" not in text and "user:" not in text, text


def test_result_text_hides_credentials_and_query_values(server: ScriptedServer) -> None:
    url = SECRET_URL.format(port=server.port)
    closed = SECRET_URL.format(port=1)  # nothing listens: the error text embeds the URL
    with syncfetch.Session(retry=0) as s:
        ok, failed = s.map([url, closed], "post")
    assert ok.response is not None and failed.error is not None
    assert "SECRETKEY" in str(failed.error)  # requests' own message carries the query
    for result in (ok, failed):
        for text in (repr(result), str(result)):
            _assert_no_secret(text)
            assert "POST" in text and "api_key=***" in text
    assert str(ok) == f"#0 POST http://127.0.0.1:{server.port}/items?api_key=***&page=*** -> 200"
    assert repr(ok) == (
        f"Result(index=0, method='POST', url='http://127.0.0.1:{server.port}/items"
        "?api_key=***&page=***', status=200, attempts=1)"
    )
    assert repr(failed).endswith("error=ConnectionError, attempts=1)")
    assert str(failed).startswith("#1 POST http://127.0.0.1:1/items?api_key=***&page=*** -> ")
    assert ok.method == failed.method == "POST"


def test_result_keeps_each_request_method(server: ScriptedServer) -> None:
    items: list[str | requests.Request] = [
        server.url_for("/a"),
        requests.Request("DELETE", server.url_for("/b")),
        requests.Request(url=server.url_for("/c")),
    ]
    with syncfetch.Session() as s:
        results = list(s.map(items, "put"))
    assert [r.method for r in results] == ["PUT", "DELETE", "PUT"]
    assert [str(r).split()[1] for r in results] == ["PUT", "DELETE", "PUT"]
    assert sorted(rec.method for rec in server.records) == ["DELETE", "PUT", "PUT"]


@pytest.mark.parametrize(
    ("message", "hidden"),
    [
        ("Max retries exceeded with url: /x?token=SECRETKEY (Caused by X)", "SECRETKEY"),
        ("Invalid URL 'https://user:hunter2@h/': No host supplied", "hunter2"),
        ("bad http://h/p?a=1&key=SECRETKEY#frag here", "SECRETKEY"),
        ("url ftp://u:hunter2@h/p;x", "hunter2"),
    ],
)
def test_result_redacts_urls_inside_error_text(message: str, hidden: str) -> None:
    result = syncfetch.Result(0, "http://h/", error=requests.ConnectionError(message))
    assert hidden not in str(result) and hidden not in repr(result)


# -- items 12 and 14: RetryPolicy refuses meaningless values --------------------------------


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"deadline": math.nan}, "deadline"),
        ({"deadline": math.inf}, "deadline"),
        ({"deadline": -1}, "deadline"),
        ({"backoff_base": math.nan}, "backoff_base"),
        ({"backoff_max": math.inf}, "backoff_max"),
        ({"retry_after_max": math.nan}, "retry_after_max"),
        ({"retry_after_max": math.inf}, "retry_after_max"),
        ({"retry_after_max": 1e30}, "retry_after_max"),
        ({"backoff_base": True}, "backoff_base"),
        ({"backoff_base": "1"}, "backoff_base"),
        ({"retries": math.inf}, "retries"),
        ({"budget": "yes"}, "budget"),
    ],
)
def test_policy_refuses_non_finite_and_negative_numbers(
    kwargs: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ValueError, match=needle) as info:
        syncfetch.RetryPolicy(**kwargs)
    value = next(iter(kwargs.values()))
    if isinstance(value, float):
        assert repr(value) in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [{"refund": math.nan}, {"refund": math.inf}, {"refund": -1}, {"reserve": -1}, {"reserve": 1.5}],
)
def test_budget_refuses_non_finite_and_negative_numbers(kwargs: dict[str, Any]) -> None:
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"RetryBudget.{name}"):
        syncfetch.RetryBudget(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"methods": "GET"}, "{'GET'}"),
        ({"methods": b"GET"}, "methods"),
        ({"methods": {"GE T"}}, "'GE T'"),
        ({"methods": {""}}, "''"),
        ({"methods": {1}}, "1"),
        ({"methods": None}, "methods"),
        ({"statuses": "429"}, "statuses"),
        ({"statuses": 429}, "statuses"),
        ({"statuses": {True}}, "True"),
        ({"statuses": {"429"}}, "'429'"),
        ({"statuses": {429, "x"}}, "'x'"),
        ({"statuses": {429.0}}, "429.0"),
        ({"statuses": {600}}, "600"),
    ],
)
def test_policy_refuses_bad_methods_and_statuses(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))) as info:
        syncfetch.RetryPolicy(**kwargs)
    assert needle in str(info.value)


def test_policy_uppercases_methods() -> None:
    policy = syncfetch.RetryPolicy(methods=["get", "Post"], statuses=[503])
    assert policy.methods == {"GET", "POST"} and policy.statuses == {503}


def test_policy_repr_is_short_and_round_trips() -> None:
    assert repr(syncfetch.RetryPolicy()) == "RetryPolicy()"
    policy = syncfetch.RetryPolicy(retries=5, methods={"get", "put"}, deadline=30.0)
    assert repr(policy) == "RetryPolicy(retries=5, methods={'GET', 'PUT'}, deadline=30.0)"
    assert eval(repr(policy), {"RetryPolicy": syncfetch.RetryPolicy}) == policy


# -- item 16: a bad per-call timeout with a deadline is the ValueError requests raises ---------

BAD_TIMEOUTS = ["5", (1, 2, 3), (1,), [1, 2], (None, "a"), ("1", 2), b"5", -1, 0, True, (1, True)]


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS)
def test_bad_timeout_with_a_deadline_is_requests_value_error(
    server: ScriptedServer, timeout: Any
) -> None:
    url = server.url_for("/t")
    with requests.Session() as plain, pytest.raises(ValueError) as expected:
        plain.get(url, timeout=timeout)
    policy = syncfetch.RetryPolicy(deadline=5)
    with syncfetch.Session(retry=policy) as s, pytest.raises(ValueError) as got:
        s.get(url, timeout=timeout)
    assert str(got.value) == str(expected.value)
    assert server.count() == 0


def test_good_timeouts_with_a_deadline_still_work(server: ScriptedServer) -> None:
    policy = syncfetch.RetryPolicy(deadline=5)
    with syncfetch.Session(retry=policy) as s:
        for timeout in (5, 2.5, (1, 2), (None, 3), (3, None), None):
            assert s.get(server.url_for("/t"), timeout=timeout).status_code == 200


# -- the wire: hostile headers on 200, 429 and 503 -------------------------------------------

HOSTILE = [
    {"Retry-After": "\xb2"},
    {"Retry-After": str(10**30)},
    {"Retry-After": "1" * 4000},
    *({"Retry-After": date} for date in HUGE_DATES),
    {"Retry-After": "-1"},
    {"Retry-After": "inf"},
    {"Retry-After": "nan"},
    {"Retry-After": ""},
    {"RateLimit": '"default";r=0;t=1e30'},
    {"RateLimit": '"default";r=0;t=inf'},
    {"RateLimit": '"default";r=0;t=nan'},
    {"RateLimit": '"default";r=0;t=\xb2'},
    {"RateLimit": ";" * 1000 + "r=0;t=1"},
    {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(10**20)},
    {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1e400"},
    {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "\xb2"},
    {"X-RateLimit-Remaining": "\xb2", "X-RateLimit-Reset-After": "-0"},
    {"RateLimit-Remaining": "0", "RateLimit-Reset": "Infinity"},
]


@pytest.mark.parametrize("status", [200, 429, 503])
@pytest.mark.parametrize("headers", HOSTILE, ids=lambda h: repr(h)[:40])
def test_hostile_headers_give_a_response_or_a_requests_error(
    server: ScriptedServer, status: int, headers: dict[str, str]
) -> None:
    server.script("/h", Step(status=status, headers=headers), Step())
    policy = syncfetch.RetryPolicy(retry_after_max=5)
    with syncfetch.Session(retry=policy) as s:
        for _ in range(2):
            try:
                r = s.get(server.url_for("/h"))
            except requests.RequestException:
                continue
            assert isinstance(r, requests.Response)
        assert s._pipeline.limiter.paused_for(bucket_key(server.url, True)) <= 5


def test_sqlite_is_handed_only_storable_pauses(tmp_path: Path) -> None:
    from syncfetch._stores.sqlite import SQLiteLimiter

    path = tmp_path / "p.db"
    limiter = SQLiteLimiter(path, [])
    limiter.pause("k", 1e30)
    limiter.close()
    with sqlite3.connect(path) as conn:
        [(until,)] = conn.execute("SELECT until FROM syncfetch_pause").fetchall()
    assert isinstance(until, int) and until < 2**63

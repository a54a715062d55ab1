"""Providers' own rate-limit headers: OpenAI, Discord, Salesforce, Binance (syncfetch._dialects).

Table tests of each parser, what the pipeline does with them on the wire, and property tests
(hypothesis): no parser raises on any ``str``, and a wait is finite, >= 0, at most MAX_PAUSE.
"""

from __future__ import annotations

import logging
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict

import syncfetch
from syncfetch._dialects import (
    UNKNOWN_RESET,
    binance_weights,
    dialect_wait,
    discord_bucket,
    openai_wait,
    parse_duration,
    retry_after_ms,
    salesforce_usage,
)
from syncfetch._feedback import is_throttle, server_wait
from syncfetch._stores.base import MAX_PAUSE
from tests._server import ScriptedServer, Step

PROPERTY = settings(max_examples=300, deadline=None)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("6m0s", 360.0),
        ("12ms", 0.012),
        ("1s", 1.0),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("20", 20.0),
        ("0.5", 0.5),
        ("7.66s", 7.66),
        ("1m30s", 90.0),
        ("250us", 0.00025),
        (" 2s ", 2.0),
        ("", None),
        ("-1s", None),
        ("1 s", None),
        ("1x", None),
        ("s", None),
        ("1.2.3s", None),
        ("²s", None),
        ("nan", None),
        ("inf", None),
        ("9" * 70 + "h", None),
    ],
)
def test_go_durations(value: str, seconds: float | None) -> None:
    got = parse_duration(value)
    assert got == (None if seconds is None else pytest.approx(seconds))


def test_openai_waits_for_the_longest_spent_quota() -> None:
    spent_requests = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}
    assert openai_wait(CaseInsensitiveDict(spent_requests)) == 360.0
    both = {
        **spent_requests,
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "12ms",
    }
    assert openai_wait(CaseInsensitiveDict(both)) == 360.0
    tokens_only = {
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "7.66s",
    }
    assert openai_wait(CaseInsensitiveDict(tokens_only)) == pytest.approx(7.66)
    left = {"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "6m0s"}
    assert openai_wait(CaseInsensitiveDict(left)) is None
    bad = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "soon"}
    assert openai_wait(CaseInsensitiveDict(bad)) is None
    assert retry_after_ms(CaseInsensitiveDict({"Retry-After-Ms": "1500"})) == 1.5
    assert retry_after_ms({"retry-after-ms": "-3"}) is None


def test_salesforce_usage() -> None:
    assert salesforce_usage({"Sforce-Limit-Info": "api-usage=25/15000"}) == (25, 15000)
    assert salesforce_usage({"Sforce-Limit-Info": "api-usage=15000/15000"}) == (15000, 15000)
    for bad in ("api-usage=25", "api-usage=a/b", "api-usage=1/0", "", "api-usage=²/5"):
        assert salesforce_usage({"Sforce-Limit-Info": bad}) is None
    wait, why = dialect_wait(200, {"Sforce-Limit-Info": "api-usage=15000/15000"})
    assert wait == UNKNOWN_RESET and "15000/15000" in why
    assert dialect_wait(200, {"Sforce-Limit-Info": "api-usage=14999/15000"}) == (None, "")


def test_discord_bucket_and_binance_weights() -> None:
    assert discord_bucket({"X-RateLimit-Bucket": "abcd1234"}) == "abcd1234"
    assert discord_bucket({"X-RateLimit-Bucket": "bad bucket"}) is None
    assert discord_bucket({"X-RateLimit-Bucket": "x" * 200}) is None
    headers = {"X-MBX-USED-WEIGHT-1M": "1180", "x-mbx-used-weight-1s": "7", "X-MBX-X": "1"}
    assert binance_weights(headers) == {"1m": 1180, "1s": 7}
    assert binance_weights({"X-MBX-USED-WEIGHT-1M": "lots"}) == {}


def test_server_wait_reads_the_dialects() -> None:
    def wait(status: int, headers: dict[str, str]) -> float | None:
        got, _ = server_wait(status, CaseInsensitiveDict(headers), retry_after=True, quota=True)
        return got

    assert wait(418, {"Retry-After": "120"}) == 120.0  # Binance's IP ban
    assert wait(429, {"retry-after-ms": "250"}) == 0.25
    assert wait(429, {"Retry-After": "2", "retry-after-ms": "250"}) == 2.0
    assert wait(200, {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"})
    assert wait(200, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "1.25"}) == 1.25
    assert wait(200, {"X-MBX-USED-WEIGHT-1M": "6000"}) is None  # the limit is not in headers
    assert wait(403, {"Retry-After": "60"}) == 60.0  # GitHub's secondary limit
    assert is_throttle(403, {"Retry-After": "60"})
    assert not is_throttle(403, {"X-RateLimit-Remaining": "12"})
    assert is_throttle(418, {"Retry-After": "120"})
    assert not is_throttle(418, {})
    _, why = server_wait(
        429,
        {"Retry-After": "1", "X-RateLimit-Bucket": "b1", "X-MBX-USED-WEIGHT-1M": "6001"},
        retry_after=True,
        quota=True,
    )
    assert "bucket b1" in why and "6001/1m" in why
    off = server_wait(200, {"Sforce-Limit-Info": "api-usage=9/9"}, retry_after=True, quota=False)
    assert off == (None, "")


def test_a_binance_ban_pauses_the_key_and_is_retried(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.script(
        "/api/v3/ticker",
        Step(status=418, headers={"Retry-After": "2", "X-MBX-USED-WEIGHT-1M": "6100"}),
        Step(),
    )
    caplog.set_level(logging.INFO, "syncfetch")
    with syncfetch.Session() as s:
        assert s.get(server.url_for("/api/v3/ticker")).status_code == 200
        assert s.stats.cooldowns == 1 and s.stats.retries == 1
    assert server.statuses("/api/v3/ticker") == [418, 200]
    assert any(getattr(r, "syncfetch_pause", 0) == 2 for r in caplog.records)


def test_a_long_binance_ban_ends_the_call_with_the_418(server: ScriptedServer) -> None:
    server.script("/ban", Step(status=418, headers={"Retry-After": "7200"}))
    with syncfetch.Session() as s:
        assert s.get(server.url_for("/ban")).status_code == 418  # beyond retry_after_max
    assert server.count("/ban") == 1


@pytest.mark.parametrize(
    "headers",
    [
        {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1m0s"},
        {"Sforce-Limit-Info": "api-usage=100/100"},
    ],
)
def test_a_spent_dialect_quota_holds_the_key(
    server: ScriptedServer, headers: dict[str, str]
) -> None:
    server.script("/q", Step(headers=headers))
    with syncfetch.Session() as s:
        s.get(server.url_for("/q"))
        assert s._pipeline.limiter.paused_for(f"http://127.0.0.1:{server.port}") > 30
        assert s.stats.cooldowns == 1


# -- properties ---------------------------------------------------------------------------------

wire_text = st.binary(max_size=64).map(lambda b: b.decode("latin-1"))
duration_text = st.text(alphabet="0123456789.hmsunµ²-+ eE", max_size=40)
values = st.one_of(st.text(max_size=64), wire_text, duration_text)
NAMES = [
    "Retry-After",
    "retry-after-ms",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset-After",
    "X-RateLimit-Bucket",
    "Sforce-Limit-Info",
    "X-MBX-USED-WEIGHT-1M",
]
names = st.one_of(st.sampled_from(NAMES), st.text(max_size=30), wire_text)
headers = st.dictionaries(
    names, st.one_of(values, st.sampled_from(["0", "1s", "6m0s"])), max_size=8
)


def _is_wait(wait: float | None) -> bool:
    return wait is None or (math.isfinite(wait) and 0 <= wait <= MAX_PAUSE)


@PROPERTY
@given(st.one_of(values, st.none()))
def test_duration_never_raises_and_is_bounded(value: str | None) -> None:
    wait = parse_duration(value)
    assert _is_wait(wait)
    if value is not None and any(c.isdigit() and not c.isascii() for c in value):
        assert wait is None


@PROPERTY
@given(
    st.lists(
        st.tuples(st.integers(0, 10**6), st.sampled_from(["h", "m", "s", "ms", "us", "ns"])),
        min_size=1,
        max_size=4,
    )
)
def test_duration_sums_its_components(parts: list[tuple[int, str]]) -> None:
    unit = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    text = "".join(f"{n}{u}" for n, u in parts)
    expected = sum(n * unit[u] for n, u in parts)
    assert parse_duration(text) == pytest.approx(min(expected, MAX_PAUSE))


@PROPERTY
@given(headers, st.sampled_from([200, 403, 418, 429, 503]))
def test_dialect_parsers_never_raise(hdrs: dict[str, str], status: int) -> None:
    ci = CaseInsensitiveDict(hdrs)
    assert _is_wait(openai_wait(ci)) and _is_wait(retry_after_ms(ci))
    wait, why = dialect_wait(status, ci)
    assert _is_wait(wait) and isinstance(why, str)
    usage = salesforce_usage(ci)
    assert usage is None or (usage[0] >= 0 and usage[1] > 0)
    bucket = discord_bucket(ci)
    assert bucket is None or (bucket.isascii() and 0 < len(bucket) <= 128)
    assert all(v >= 0 for v in binance_weights(hdrs).values())
    wait, why = server_wait(status, ci, retry_after=True, quota=True)
    assert _is_wait(wait) and isinstance(why, str)
    assert is_throttle(status, ci) in (True, False)


@PROPERTY
@given(st.integers(0, 10**20), st.integers(-5, 10**20))
def test_salesforce_usage_reads_what_it_is_given(used: int, allowed: int) -> None:
    got = salesforce_usage({"Sforce-Limit-Info": f"api-usage={used}/{allowed}"})
    if allowed <= 0 or used >= 10**18 or allowed >= 10**18:
        assert got is None
    else:
        assert got == (used, allowed)

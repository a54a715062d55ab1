"""Request/response handling through the pipeline, with ``responses`` (no wire)."""

from __future__ import annotations

import email.utils
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import responses
from requests.adapters import BaseAdapter, HTTPAdapter
from urllib3.util.retry import Retry

import syncfetch

URL = "http://api.test/items"


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def retry_waits(caplog: pytest.LogCaptureFixture) -> list[float]:
    return [r.syncfetch_wait for r in caplog.records if hasattr(r, "syncfetch_wait")]


def test_verbs_params_auth_cookies_hooks_work_unchanged(mocked: responses.RequestsMock) -> None:
    mocked.get(URL, body="hello", headers={"Set-Cookie": "sid=abc; Path=/"})
    mocked.post(URL, json={"made": True}, status=201)
    seen: list[int] = []
    with syncfetch.Session() as s:
        s.headers["X-Team"] = "core"
        hooks = {"response": lambda r, **kw: seen.append(r.status_code)}
        r = s.get(URL, params={"q": "x"}, auth=("u", "p"), hooks=hooks)
        assert r.text == "hello"
        assert s.cookies.get("sid") == "abc"
        sent = mocked.calls[0].request
        assert sent.headers["X-Team"] == "core"
        assert sent.headers["Authorization"].startswith("Basic ")
        assert sent.url == URL + "?q=x"
        r = s.post(URL, json={"a": 1})
        assert r.status_code == 201 and r.json() == {"made": True}
        assert mocked.calls[1].request.headers["Cookie"] == "sid=abc"
    assert seen == [200]  # hooks see the final response once, not each attempt


def test_retryable_status_is_retried_then_succeeds(
    mocked: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    mocked.get(URL, status=503)
    mocked.get(URL, status=502)
    mocked.get(URL, body="ok")
    caplog.set_level(logging.INFO, "syncfetch")
    with syncfetch.Session(retry=syncfetch.RetryPolicy(retries=3, jitter=False)) as s:
        r = s.get(URL)
        stats = s.stats
    assert r.status_code == 200 and len(mocked.calls) == 3
    assert (stats.requests, stats.attempts, stats.retries) == (1, 3, 2)
    assert retry_waits(caplog) == [0.5, 1.0]  # capped exponential without jitter


def test_full_jitter_stays_under_the_cap(
    mocked: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    mocked.get(URL, status=500)
    caplog.set_level(logging.INFO, "syncfetch")
    policy = syncfetch.RetryPolicy(retries=6, backoff_base=1, backoff_max=4)
    with syncfetch.Session(retry=policy) as s:
        s.get(URL)
    caps = [1, 2, 4, 4, 4, 4]
    waits = retry_waits(caplog)
    assert len(waits) == 6 and all(0 <= w <= c for w, c in zip(waits, caps, strict=True))


def test_exhausted_retries_return_last_response(mocked: responses.RequestsMock) -> None:
    mocked.get(URL, status=503, body="down")
    with syncfetch.Session(retry=2) as s:
        r = s.get(URL)
        assert s.stats.giveups == 1
    assert r.status_code == 503 and r.text == "down" and len(mocked.calls) == 3
    with pytest.raises(requests.HTTPError):
        r.raise_for_status()


def test_exhausted_retries_on_exception_raise_it(mocked: responses.RequestsMock) -> None:
    mocked.get(URL, body=requests.ConnectionError("reset by peer"))
    with syncfetch.Session(retry=2) as s, pytest.raises(requests.ConnectionError, match="reset"):
        s.get(URL)
    assert len(mocked.calls) == 3


def test_retry_disabled(mocked: responses.RequestsMock) -> None:
    mocked.get(URL, status=503)
    for retry in (None, 0):
        with syncfetch.Session(retry=retry) as s:
            assert s.get(URL).status_code == 503
    assert len(mocked.calls) == 2


@pytest.mark.parametrize("form", ["seconds", "date"])
def test_retry_after_is_honoured_without_jitter(
    mocked: responses.RequestsMock, caplog: pytest.LogCaptureFixture, form: str
) -> None:
    value = "7" if form == "seconds" else email.utils.formatdate(time.time() + 7, usegmt=True)
    mocked.get(URL, status=429, headers={"Retry-After": value})
    mocked.get(URL, body="ok")
    caplog.set_level(logging.INFO, "syncfetch")
    with syncfetch.Session() as s:
        assert s.get(URL).status_code == 200
        assert s.stats.responses_429 == 1
    [wait] = retry_waits(caplog)
    assert 5.5 <= wait <= 7.0 if form == "date" else wait == 7.0


def test_retry_after_over_the_cap_gives_up_at_once(mocked: responses.RequestsMock) -> None:
    mocked.get(URL, status=429, headers={"Retry-After": "3600"})
    with syncfetch.Session(retry=syncfetch.RetryPolicy(retry_after_max=60)) as s:
        r = s.get(URL)
    assert r.status_code == 429 and len(mocked.calls) == 1


def test_malformed_retry_after_falls_back_to_backoff(
    mocked: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    mocked.get(URL, status=503, headers={"Retry-After": "soon-ish"})
    mocked.get(URL, body="ok")
    caplog.set_level(logging.INFO, "syncfetch")
    with syncfetch.Session() as s:
        assert s.get(URL).status_code == 200
    [wait] = retry_waits(caplog)
    assert 0 <= wait <= 0.5


def test_post_is_not_retried_by_default(mocked: responses.RequestsMock) -> None:
    mocked.post(URL, status=503)
    with syncfetch.Session() as s:
        assert s.post(URL, data=b"x").status_code == 503
    assert len(mocked.calls) == 1


def test_post_with_idempotency_key_is_retried_with_same_key(
    mocked: responses.RequestsMock,
) -> None:
    mocked.post(URL, status=503)
    mocked.post(URL, status=201)
    with syncfetch.Session() as s:
        r = s.post(URL, json={"a": 1}, headers={"Idempotency-Key": "k-1"})
    assert r.status_code == 201
    assert [c.request.headers["Idempotency-Key"] for c in mocked.calls] == ["k-1", "k-1"]
    assert [c.request.body for c in mocked.calls] == [b'{"a": 1}'] * 2


def test_post_retried_when_policy_opts_in(mocked: responses.RequestsMock) -> None:
    mocked.patch(URL, status=502)
    mocked.patch(URL, status=200)
    with syncfetch.Session(retry=syncfetch.RetryPolicy(retry_non_idempotent=True)) as s:
        assert s.patch(URL, data="x").status_code == 200


def test_generator_body_is_never_retried(mocked: responses.RequestsMock) -> None:
    mocked.put(URL, status=503)

    def body() -> Iterator[bytes]:
        yield b"part"

    with syncfetch.Session() as s:
        assert s.put(URL, data=body()).status_code == 503
    assert len(mocked.calls) == 1


def test_ssl_and_invalid_url_errors_are_not_retried(mocked: responses.RequestsMock) -> None:
    mocked.get(URL, body=requests.exceptions.SSLError("bad cert"))
    # Which error an unparsable URL gives depends on the urllib3 release (MissingSchema
    # before 2.8, InvalidURL since): syncfetch must raise what plain requests raises.
    with requests.Session() as plain, pytest.raises(requests.RequestException) as expected:
        plain.get("not a url")
    with syncfetch.Session() as s:
        with pytest.raises(requests.exceptions.SSLError):
            s.get(URL)
        with pytest.raises(expected.type):
            s.get("not a url")
        with pytest.raises(requests.exceptions.InvalidSchema):
            s.get("ftp://example.test/x")
        # Neither malformed URL took a slot, a token or an attempt.
        assert s.stats.attempts == 1
    assert len(mocked.calls) == 1


def test_logs_never_carry_secrets(
    mocked: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    secret_url = "http://user:hunter2@api.test/items?api_key=SECRET123&page=2"
    mocked.get(re.compile(r"http://.*api\.test/items.*"), status=503)
    caplog.set_level(logging.DEBUG, "syncfetch")
    with syncfetch.Session(retry=1) as s:
        s.get(secret_url, headers={"Authorization": "Bearer TOKEN9"}, cookies={"sid": "COOK7"})
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "giving up" in text and "retrying" in text
    for secret in ("hunter2", "SECRET123", "TOKEN9", "COOK7"):
        assert secret not in text
    assert "api_key=***" in text


class RecordingAdapter(BaseAdapter):
    """Answers 200 and remembers the keyword arguments of every send."""

    def __init__(self) -> None:
        super().__init__()
        self.kwargs: list[dict[str, Any]] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.kwargs.append(kwargs)
        resp = requests.Response()
        resp.status_code = 200
        resp._content = b"ok"
        resp.request = request
        resp.url = request.url or ""
        return resp

    def close(self) -> None:
        pass


def test_default_timeout_applies_and_explicit_none_is_respected() -> None:
    adapter = RecordingAdapter()
    with syncfetch.Session(timeout=(1.5, 9)) as s:
        s.mount("mock://", adapter)
        s.get("mock://x/")
        s.get("mock://x/", timeout=None)
        s.get("mock://x/", timeout=4)
        s.send(s.prepare_request(requests.Request("GET", "mock://x/")))
    assert [k["timeout"] for k in adapter.kwargs] == [(1.5, 9), None, 4, (1.5, 9)]


def test_deadline_shrinks_the_attempt_timeout() -> None:
    adapter = RecordingAdapter()
    policy = syncfetch.RetryPolicy(deadline=2.0)
    with syncfetch.Session(timeout=(5, 30), retry=policy) as s:
        s.mount("mock://", adapter)
        s.get("mock://x/")
    connect, read = adapter.kwargs[0]["timeout"]
    assert 1.5 < connect <= 2.0 and 1.5 < read <= 2.0


def test_mounting_an_adapter_with_urllib3_retries_warns() -> None:
    with syncfetch.Session() as s:
        with pytest.warns(UserWarning, match="bypass the rate limit"):
            s.mount("https://", HTTPAdapter(max_retries=Retry(total=3)))
        s.mount("http://", HTTPAdapter(max_retries=0))  # no warning: turned into an error


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"limits": "10/fortnight"}, "'10/fortnight'"),
        ({"limits": ["5/s", "0/min"]}, "'0/min'"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_concurrency": -3}, "-3"),
        ({"max_wait": -1}, "max_wait"),
        ({"timeout": -2}, "-2"),
        ({"timeout": (1, 2, 3)}, "(1, 2, 3)"),
        ({"retry": "often"}, "'often'"),
        ({"retry": -1}, "-1"),
    ],
)
def test_bad_arguments_name_the_value(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError) as info:
        syncfetch.Session(**kwargs)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [{"retries": -1}, {"backoff_base": -1}, {"deadline": 0}, {"statuses": {999}}],
)
def test_bad_policy_values_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        syncfetch.RetryPolicy(**kwargs)


def test_policy_is_immutable() -> None:
    policy = syncfetch.RetryPolicy()
    with pytest.raises(AttributeError):
        policy.retries = 5  # type: ignore[misc]
    assert policy.methods == {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"}
    assert policy.statuses == {429, 500, 502, 503, 504}

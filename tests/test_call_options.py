"""A call's own ``retry=``, ``max_wait=`` and ``timeout=``: checked at the boundary, applied
to that call alone (its redirect hops and retries included), through ``submit`` and ``map``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import responses
from urllib3.util import Timeout

import syncfetch
from syncfetch._options import CallOptions, resolve
from syncfetch._pipeline import CURRENT_CALL
from tests._server import ScriptedServer, Step

URL = "http://api.test/items"


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def _statuses(mocked: responses.RequestsMock, *statuses: int) -> None:
    for status in statuses:
        mocked.get(URL, status=status)


def test_a_call_sets_its_own_retry(mocked: responses.RequestsMock) -> None:
    _statuses(mocked, 503, 503, 200)
    with syncfetch.Session(retry=0) as s:
        assert s.get(URL, retry=2).status_code == 200
        assert len(mocked.calls) == 3
        assert s.get(URL).status_code == 200  # the session's retry=0 again: one attempt
        assert len(mocked.calls) == 4


def test_a_call_turns_retries_off_or_takes_a_policy(mocked: responses.RequestsMock) -> None:
    _statuses(mocked, 503, 503, 200)
    with syncfetch.Session(retry=5) as s:
        assert s.get(URL, retry=None).status_code == 503
        assert s.get(URL, retry=0).status_code == 503
        assert len(mocked.calls) == 2
        policy = syncfetch.RetryPolicy(retries=1, statuses=frozenset({500}))
        assert s.get(URL, retry=policy).status_code == 200  # 200 is not retried either way
        assert s.stats.retries == 0


def test_a_calls_retry_decides_its_statuses(mocked: responses.RequestsMock) -> None:
    _statuses(mocked, 500, 200)
    with syncfetch.Session(retry=syncfetch.RetryPolicy(retries=3, statuses=frozenset())) as s:
        policy = syncfetch.RetryPolicy(retries=1, statuses=frozenset({500}))
        assert s.get(URL, retry=policy).status_code == 200
        assert s.stats.retries == 1


def test_a_call_sets_its_own_max_wait(mocked: responses.RequestsMock) -> None:
    mocked.get(URL)
    with syncfetch.Session("1/minute") as s:  # the session would wait the minute out
        s.get(URL)
        with pytest.raises(syncfetch.RateLimitExceeded):
            s.get(URL, max_wait=0)
        assert len(mocked.calls) == 1
        assert s.stats.rate_limited == 1


def test_a_longer_max_wait_than_the_sessions_waits_for_its_token(
    mocked: responses.RequestsMock,
) -> None:
    mocked.get(URL)
    with syncfetch.Session("2/second", max_wait=0) as s:
        s.get(URL)
        s.get(URL)
        with pytest.raises(syncfetch.RateLimitExceeded):
            s.get(URL)
        assert s.get(URL, max_wait=5).status_code == 200
        assert len(mocked.calls) == 3


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"max_wait": -1}, "per-call max_wait must be None (wait as long as needed) or finite"),
        ({"max_wait": float("inf")}, "not inf"),
        ({"max_wait": "5"}, "not '5'"),
        ({"max_wait": True}, "not True"),
        ({"retry": "3"}, "per-call retry must be a RetryPolicy, an int or None, not '3'"),
        ({"retry": 2.5}, "not 2.5"),
        ({"retry": -1}, "per-call retry"),
        # requests' own messages, as a plain requests.Session raises them
        ({"timeout": 0}, "Attempted to set connect timeout to 0"),
        ({"timeout": (1, -2)}, "Invalid timeout (1, -2)"),
        ({"timeout": "5"}, "Timeout value connect was 5"),
        ({"timeout": [1, 2]}, "Timeout value connect was [1, 2]"),
    ],
)
def test_bad_per_call_options_are_refused_before_anything_is_sent(
    mocked: responses.RequestsMock, kwargs: dict[str, Any], needle: str
) -> None:
    mocked.get(URL)
    with syncfetch.Session("1/minute") as s:
        with pytest.raises(ValueError) as info:
            s.get(URL, **kwargs)
        assert needle in str(info.value)
        with pytest.raises(ValueError):  # at submit(), not in the future
            s.submit("GET", URL, **kwargs)
        with pytest.raises(ValueError):  # at map(), before any item starts
            s.map([URL], **kwargs)
        assert len(mocked.calls) == 0
        assert s.stats.requests == 0
        assert s.get(URL).status_code == 200  # the minute's token was never taken


def test_a_per_call_timeout_keeps_requests_forms(mocked: responses.RequestsMock) -> None:
    mocked.get(URL)
    with syncfetch.Session() as s:
        for timeout in (None, 5, 2.5, (1, 2), (None, 3), Timeout(connect=1, read=2)):
            assert s.get(URL, timeout=timeout).status_code == 200
        assert len(mocked.calls) == 6


def test_submit_and_map_take_per_call_options(mocked: responses.RequestsMock) -> None:
    _statuses(mocked, 503, 200)
    with syncfetch.Session(retry=0, max_workers=2) as s:
        assert s.submit("GET", URL, retry=1).result(5).status_code == 200
        results = list(s.map([URL, URL], retry=1))
        assert [r.response.status_code for r in results if r.response is not None] == [200, 200]
        assert len(mocked.calls) == 4


def test_map_items_each_get_the_call_options(mocked: responses.RequestsMock) -> None:
    mocked.get(URL)
    with syncfetch.Session("1/minute", max_workers=1) as s:
        results = list(s.map([URL, URL, URL], max_wait=0))
        errors = [type(r.error) for r in results]
        assert errors == [type(None), syncfetch.RateLimitExceeded, syncfetch.RateLimitExceeded]
        assert len(mocked.calls) == 1


def test_overrides_belong_to_their_session(mocked: responses.RequestsMock) -> None:
    """A response hook of one session's call that calls another session: its own settings."""
    _statuses(mocked, 503, 503, 200)
    inner_status: list[int] = []
    with syncfetch.Session(retry=2) as inner, syncfetch.Session(retry=0) as outer:

        def hook(resp: requests.Response, **kwargs: Any) -> None:
            inner_status.append(inner.get(URL).status_code)

        outer.get(URL, retry=0, max_wait=1, hooks={"response": hook})
    assert inner_status == [200]  # retried with inner's retry=2, not outer's call's retry=0


def test_call_options_are_resolved_once_per_call() -> None:
    seen: list[CallOptions | None] = []

    def record(resp: requests.Response, **kwargs: Any) -> None:
        call = CURRENT_CALL.get()
        seen.append(call.options if call is not None else None)

    with responses.RequestsMock() as mocked:
        mocked.get(URL, status=302, headers={"Location": URL + "/next"})
        mocked.get(URL + "/next")
        with syncfetch.Session(retry=3, max_wait=7) as s:
            s.get(URL, max_wait=1, hooks={"response": record})
            defaults = s._pipeline.options
    assert len(seen) == 2 and seen[0] is seen[1]  # the hop shares its call's options
    assert seen[0] == resolve(defaults, {"max_wait": 1.0})
    assert seen[0] is not None and seen[0].retry is defaults.retry


# On the wire


def test_a_redirect_hop_and_its_retries_keep_the_calls_retry(server: ScriptedServer) -> None:
    server.script("/start", Step(status=302, headers={"Location": "/flaky"}))
    server.script("/flaky", Step(status=503), Step(status=503), Step(body=b"done"))
    with syncfetch.Session(retry=0) as s:
        resp = s.get(server.url_for("/start"), retry=2)
        assert (resp.status_code, resp.text) == (200, "done")
    assert server.statuses() == [302, 503, 503, 200]


def test_a_per_call_max_wait_sends_nothing_without_a_token(server: ScriptedServer) -> None:
    with syncfetch.Session("1/minute") as s:
        s.get(server.url_for("/x"))
        with pytest.raises(syncfetch.RateLimitExceeded):
            s.get(server.url_for("/x"), max_wait=0)
        future = s.submit("GET", server.url_for("/x"), max_wait=0)
        with pytest.raises(syncfetch.RateLimitExceeded):
            future.result(5)
    assert server.count() == 1


def test_a_per_call_timeout_bounds_that_call_only(server: ScriptedServer) -> None:
    server.script("/slow", Step(delay=0.5))
    with syncfetch.Session(retry=0, timeout=5) as s:
        with pytest.raises(requests.exceptions.ReadTimeout):
            s.get(server.url_for("/slow"), timeout=(1, 0.1))
        assert s.get(server.url_for("/slow")).status_code == 200
    assert server.wait_idle()


def test_per_call_options_from_many_threads_stay_with_their_calls(server: ScriptedServer) -> None:
    server.script("/flaky", Step(status=503))  # every answer is a 503
    results: dict[int, int] = {}

    def call(retries: int) -> None:
        with_retry = s.get(server.url_for(f"/flaky?r={retries}"), retry=retries)
        results[retries] = with_retry.status_code

    with syncfetch.Session(retry=0, max_concurrency=4) as s:
        threads = [threading.Thread(target=call, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    assert results == {0: 503, 1: 503, 2: 503, 3: 503}
    counts = {n: server.count(f"/flaky?r={n}") for n in range(4)}
    assert counts == {0: 1, 1: 2, 2: 3, 3: 4}

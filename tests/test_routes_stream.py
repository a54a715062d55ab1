"""A route's ``settle`` on ``stream=True`` responses, on the wire: called once the body has
been read to its end or the response closed (read or not), at most once, its failures
logged and never raised into the reader; the charge is corrected then."""

from __future__ import annotations

import gc
from collections.abc import Callable

import pytest
import requests

import syncfetch
from syncfetch import RateLimitExceeded, Route
from tests._server import ScriptedServer, Step

BODY = b"x" * 200_000  # several reads


def _session(
    server: ScriptedServer, settle: Callable[[requests.Response], int]
) -> syncfetch.Session:
    # 5 tokens up front, 2 in truth (X-Cost): 2 + 5 and 4 + 5 fit in 10, 6 + 5 does not.
    server.script("/q", Step(body=BODY, headers={"X-Cost": "2"}))
    route = Route("10/minute", cost=5, settle=settle)
    return syncfetch.Session(limits={server.url + "/q": route}, max_wait=0, retry=0)


def _two_more_then_refused(session: syncfetch.Session, url: str) -> None:
    session.get(url)  # settled too (read): 2 + 2, plus 5 up front, fit
    session.get(url)
    with pytest.raises(RateLimitExceeded):
        session.get(url)


def test_settle_runs_once_a_streamed_body_is_read_to_its_end(server: ScriptedServer) -> None:
    seen: list[int] = []

    def settle(response: requests.Response) -> int:
        seen.append(response.status_code)
        return int(response.headers["X-Cost"])

    url = server.url_for("/q")
    with _session(server, settle) as session:
        response = session.get(url, stream=True)
        assert seen == []  # the body is not read yet
        assert sum(len(chunk) for chunk in response.iter_content(8192)) == len(BODY)
        assert seen == [200]  # read to its end: settled, before any close
        response.close()
        assert seen == [200]  # at most once
        _two_more_then_refused(session, url)
    assert server.count("/q") == 3


def test_settle_runs_when_a_streamed_response_is_closed_unread(server: ScriptedServer) -> None:
    seen: list[str] = []

    def settle(response: requests.Response) -> int:
        seen.append(response.headers["X-Cost"])  # headers only: the body was never read
        return int(response.headers["X-Cost"])

    url = server.url_for("/q")
    with _session(server, settle) as session:
        with session.get(url, stream=True) as response:
            assert response.status_code == 200
        assert seen == ["2"]
        _two_more_then_refused(session, url)
    assert server.count("/q") == 3


def test_without_settling_the_estimate_stands(server: ScriptedServer) -> None:
    # The control: a streamed response left open is not settled, so 5 + 5 fill the window.
    url = server.url_for("/q")
    with _session(server, lambda r: int(r.headers["X-Cost"])) as session:
        response = session.get(url, stream=True)
        session.get(url)  # 5 (streamed, unsettled) + 2 (read, settled) + 5 up front
        with pytest.raises(RateLimitExceeded):
            session.get(url)  # 5 + 2 + 5 > 10
        response.close()
        session.get(url)  # settled at close: 2 + 2 + 5 fit


def test_a_failing_settle_is_logged_not_raised_into_the_reader(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def settle(response: requests.Response) -> int:
        calls.append(1)
        raise KeyError("no usage here")

    url = server.url_for("/q")
    with _session(server, settle) as session:
        response = session.get(url, stream=True)
        assert b"".join(response.iter_content(8192)) == BODY  # nothing raised while reading
        response.close()
        assert calls == [1]
        session.get(url)  # the charge stood: 5 + 5 (this one failed to settle too)
        with pytest.raises(RateLimitExceeded):
            session.get(url)
    assert "the charge stands" in caplog.text


def test_a_dropped_streamed_response_with_settle_still_frees_its_slot(
    server: ScriptedServer,
) -> None:
    server.script("/q", Step(body=BODY))
    route = Route("100/second", settle=lambda r: 1)
    with syncfetch.Session(
        limits={server.url + "/q": route}, max_concurrency=1, max_wait=2
    ) as session:
        response = session.get(server.url_for("/q"), stream=True)
        del response  # unread, unclosed: collected at once (no cycle through settle)
        assert session.get(server.url_for("/q")).status_code == 200
    gc.collect()

"""A route's own ``retry``, ``timeout`` and ``max_wait`` (``Route(limits, retry=...)``) on the
wire: they apply to the calls paying that route, not to another route's; a call's own
argument wins, then the most specific route setting it, then the session's."""

from __future__ import annotations

import contextlib
import json

import pytest
import requests

import syncfetch
from syncfetch import RateLimitExceeded, RetryPolicy, Route
from syncfetch._routes import RouteTable
from tests._server import ScriptedServer, Step


def test_a_routes_retry_count_applies_to_its_calls_only(server: ScriptedServer) -> None:
    for path in ("/a/x", "/a/y", "/b/x", "/c/x"):
        server.script(path, Step(status=503))  # every answer a 503
    url = server.url
    routes = {url + "/a/": Route(None, retry=3), url + "/b/": Route(None)}
    with syncfetch.Session(limits=routes, retry=0) as session:
        assert session.get(url + "/a/x").status_code == 503
        assert session.get(url + "/b/x").status_code == 503  # a route without retry
        assert session.get(url + "/c/x").status_code == 503  # no route at all
        assert session.get(url + "/a/y", retry=1).status_code == 503  # the call's own wins
    assert [server.count(p) for p in ("/a/x", "/b/x", "/c/x", "/a/y")] == [4, 1, 1, 2]


def test_the_most_specific_route_setting_it_wins(server: ScriptedServer) -> None:
    for path in ("/a/b/x", "/a/x", "/z"):
        server.script(path, Step(status=503))
    url = server.url
    routes = {
        url: Route("100/second", retry=1),
        url + "/a/": Route(None, retry=RetryPolicy(retries=2)),
        url + "/a/b/": Route(None, cost=1),  # sets no retry: /a/'s applies
    }
    with syncfetch.Session(limits=routes, retry=5) as session:
        for path in ("/a/b/x", "/a/x", "/z"):
            assert session.get(url + path).status_code == 503
    assert [server.count(p) for p in ("/a/b/x", "/a/x", "/z")] == [3, 3, 2]


def test_a_routes_retry_none_turns_retries_off(server: ScriptedServer) -> None:
    server.script("/post/x", Step(status=503))
    url = server.url
    with syncfetch.Session(limits={"GET " + url + "/post/": Route(None, retry=None)}) as s:
        assert s.get(url + "/post/x").status_code == 503
        assert server.count("/post/x") == 1
        assert s.get(url + "/post/x", retry=2).status_code == 503
    assert server.count("/post/x") == 4


def test_a_routes_timeout_applies_to_its_calls_only(server: ScriptedServer) -> None:
    server.script("/slow/x", Step(delay=0.5))
    server.script("/other/x", Step(delay=0.5))
    url = server.url
    routes = {url + "/slow/": Route(None, timeout=(2, 0.1)), url + "/other/": Route(None)}
    with syncfetch.Session(limits=routes, retry=0, timeout=5) as session:
        with pytest.raises(requests.exceptions.ReadTimeout):
            session.get(url + "/slow/x")
        assert session.get(url + "/other/x").status_code == 200  # the session's 5 s
        assert session.get(url + "/slow/x", timeout=5).status_code == 200  # the call's wins
        # map's timeout is each item's own too.
        results = list(session.map([url + "/slow/x"], timeout=5))
        assert results[0].response is not None and results[0].response.status_code == 200
        results = list(session.map([url + "/slow/x"]))
        assert isinstance(results[0].error, requests.exceptions.ReadTimeout)
    assert server.wait_idle()


def test_a_routes_max_wait_applies_to_its_calls_only(server: ScriptedServer) -> None:
    url = server.url
    routes = {url + "/fast/": Route("1/second", max_wait=0), url + "/calm/": "1/second"}
    with syncfetch.Session(limits=routes, max_wait=None) as session:
        session.get(url + "/fast/1")
        with pytest.raises(RateLimitExceeded):
            session.get(url + "/fast/2")  # the route's max_wait=0: refused at once
        session.get(url + "/calm/1")
        session.get(url + "/calm/2")  # the session's max_wait=None: waits for the token
        session.get(url + "/fast/3", max_wait=5)  # the call's own wins: waits
    assert server.count("/fast/2") == 0
    assert [server.count(p) for p in ("/fast/1", "/fast/3", "/calm/1", "/calm/2")] == [1] * 4


def test_a_routes_retry_deadline_bounds_its_calls(server: ScriptedServer) -> None:
    server.script("/slow/x", Step(status=503, delay=0.3))  # every answer a slow 503
    url = server.url
    policy = RetryPolicy(retries=10, deadline=0.5)
    session = syncfetch.Session(limits={url + "/slow/": Route(None, retry=policy)})
    with session, contextlib.suppress(requests.RequestException):  # the deadline's end
        session.get(url + "/slow/x")
    assert server.wait_idle()
    assert 1 <= server.count("/slow/x") <= 2  # not the 11 of retries=10 without a deadline


def test_bad_route_settings_are_refused_naming_the_route() -> None:
    for bad in (
        {"retry": "3"},
        {"retry": -1},
        {"timeout": 0},
        {"timeout": float("inf")},
        {"timeout": (1, 2, 3)},
        {"max_wait": -1},
        {"max_wait": float("nan")},
        {"max_wait": True},
    ):
        with pytest.raises(ValueError, match=r"route 'https://a\.test/x'"):
            RouteTable({"https://a.test/x": {"limits": "1/s", **bad}})
        with pytest.raises(ValueError):
            Route("1/s", **bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a valid RetryPolicy"):
        RouteTable({"https://a.test/x": {"limits": "1/s", "retry": {"tries": 3}}})


def test_a_table_sets_a_routes_retry_timeout_and_max_wait() -> None:
    from syncfetch._settings import session_from_settings

    config = json.loads(
        '{"limits": {"https://a.test/x": {"limits": "1/second", "retry": 5, "timeout": 10, '
        '"max_wait": 2}, "https://a.test/y": {"limits": null, "retry": {"retries": 2, '
        '"deadline": 30}, "timeout": [1, 2], "max_wait": null}}}'
    )
    with session_from_settings(config) as session:
        assert isinstance(session.limits, RouteTable)
    table = RouteTable(config["limits"])
    request = requests.Request("GET", "https://a.test/x/1").prepare()
    route = table.match(request, 1)[-1].route
    assert route.retry == RetryPolicy(retries=5) and route.timeout == 10 and route.max_wait == 2
    request = requests.Request("GET", "https://a.test/y").prepare()
    route = table.match(request, 1)[-1].route
    assert route.retry == RetryPolicy(retries=2, deadline=30)
    assert route.timeout == (1, 2) and route.max_wait is None
    assert Route("1/s").retry is syncfetch.UNSET  # not set: the session's applies

"""Limits per route and costs per call on the wire, against strict servers in their own
process (``FakeAPI`` for per-route and per-cost windows, ``strict_server`` for scripts)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import pytest
import requests
import responses

import syncfetch
from syncfetch import RateLimitExceeded, Route
from syncfetch._routes import RouteTable
from syncfetch.testing import FakeAPI
from tests._server import ScriptedServer, Step

StartAPI = Callable[..., FakeAPI]


def fetch_all(session: syncfetch.Session, urls: list[str]) -> list[int]:
    results = list(session.map(urls))
    assert all(r.error is None for r in results), [r.error for r in results if r.error]
    return [r.response.status_code for r in results if r.response is not None]


@pytest.mark.slow
def test_a_small_route_under_a_bigger_origin_route_both_reached_no_429(
    fake_api: StartAPI,
) -> None:
    # GitHub's 30/minute search under 5000/hour, scaled down: 3/s under 10/s.
    api = fake_api("10/second", routes={"/search/": "3/second"})
    session = syncfetch.Session(
        limits={api.url: "10/second", api.url + "/search/": "3/second"}, max_concurrency=8
    )
    urls = [api.url_for(f"/search/q{i}") for i in range(9)]
    urls += [api.url_for(f"/users/{i}") for i in range(21)]
    with session:
        statuses = fetch_all(session, urls)
    assert statuses.count(429) == 0 and api.count(429) == 0
    assert api.max_in_window(1.0, "/search/*") == 3  # the search route reached...
    assert api.max_in_window(1.0) == 10  # ...and the origin's, which all calls paid


@pytest.mark.slow
def test_each_id_gets_its_own_bucket(fake_api: StartAPI) -> None:
    api = fake_api(routes={"/items/1": "2/second", "/items/2": "2/second"})
    session = syncfetch.Session(limits={api.url + "/items/{id}": "2/second"}, max_concurrency=6)
    urls = [api.url_for(f"/items/{1 + i % 2}") for i in range(10)]
    with session:
        statuses = fetch_all(session, urls)
    assert statuses.count(429) == 0 and api.count(429) == 0
    assert api.max_in_window(1.0, "/items/1") == 2
    # The two ids went side by side: one bucket each, not one for both.
    assert api.max_in_window(1.0) == 4


@pytest.mark.slow
def test_a_calls_cost_is_taken_from_the_route(fake_api: StartAPI) -> None:
    api = fake_api(cost_limits="10/second", costs={"/graphql": 4})
    routes = {api.url + "/graphql": Route("10/second", cost={"POST": 4, "*": 1})}
    with syncfetch.Session(limits=routes, max_concurrency=4) as session:
        statuses = fetch_all(session, [requests.Request("POST", api.url_for("/graphql"))] * 7)
    assert statuses.count(429) == 0 and api.count(429) == 0
    assert api.max_in_window(1.0) == 2  # 2 x 4 points fit in 10 a second, 3 x 4 do not


@pytest.mark.slow
def test_a_calls_own_cost_is_charged_by_routes_without_one(fake_api: StartAPI) -> None:
    api = fake_api(cost_limits="10/second", costs={"/graphql": 4})
    with syncfetch.Session(limits={api.url: "10/second"}, max_concurrency=4) as session:
        urls = [api.url_for("/graphql")] * 7
        statuses = [r.response.status_code for r in session.map(urls, "POST", cost=4)]
    assert statuses.count(429) == 0 and api.count(429) == 0
    assert api.max_in_window(1.0) == 2


def test_all_or_nothing_a_call_refused_by_max_wait_takes_no_origin_token(
    strict_server: ScriptedServer,
) -> None:
    strict_server.limit([(5, 1.0)])  # the server's limit is the origin's
    url = strict_server.url
    session = syncfetch.Session(limits={url: "5/second", url + "/search": "1/second"}, max_wait=0.2)
    with session:
        assert session.get(url + "/search/a").status_code == 200
        with pytest.raises(RateLimitExceeded):
            session.get(url + "/search/b")  # search is spent for a second: takes nothing
        # The origin kept its other 4 tokens for the calls that can go now.
        session.max_wait = 0
        for i in range(4):
            assert session.get(f"{url}/users/{i}").status_code == 200
        with pytest.raises(RateLimitExceeded):
            session.get(url + "/users/5")
    assert strict_server.count(status=429) == 0


def test_every_redirect_hop_pays_the_routes_of_its_own_url(
    strict_server: ScriptedServer,
) -> None:
    strict_server.script("/old", Step(status=302, headers={"Location": "/search/moved"}))
    url = strict_server.url
    with syncfetch.Session(limits={url + "/search/": "1/minute"}, max_wait=0) as session:
        assert session.get(url + "/old").status_code == 200  # the hop to /search/ paid it
        with pytest.raises(RateLimitExceeded):
            session.get(url + "/search/other")
        assert session.get(url + "/old2").status_code == 200  # no route: not limited


def test_every_retry_pays_the_routes_again(strict_server: ScriptedServer) -> None:
    strict_server.script("/search/flaky", Step(status=503), Step(status=200))
    url = strict_server.url
    with syncfetch.Session(limits={url + "/search/": "2/minute"}, max_wait=0) as session:
        assert session.get(url + "/search/flaky").status_code == 200  # 2 attempts, 2 tokens
        with pytest.raises(RateLimitExceeded):
            session.get(url + "/search/other")
    assert strict_server.count("/search/flaky") == 2


def test_retry_after_pauses_the_most_specific_route_the_response_came_from(
    strict_server: ScriptedServer,
) -> None:
    strict_server.script("/search/a", Step(status=429, headers={"Retry-After": "30"}))
    url = strict_server.url
    routes = {url: "100/second", url + "/search/": "10/second"}
    with syncfetch.Session(limits=routes, retry=0, max_wait=1) as session:
        assert session.get(url + "/search/a").status_code == 429
        assert session.get(url + "/users/1").status_code == 200  # the origin is not paused
        with pytest.raises(RateLimitExceeded, match="paused"):
            session.get(url + "/search/b")
    assert strict_server.count("/search/b") == 0


# -- the boundary -----------------------------------------------------------------------------


def test_bad_costs_are_refused_at_the_call() -> None:
    with syncfetch.Session(limits={"*": "3/second"}) as session:
        for bad in (-1, 1.5, True, "2"):
            with pytest.raises(ValueError, match="cost"):
                session.get("https://a.test/", cost=bad)
        with pytest.raises(ValueError, match="can never be taken"):
            session.get("https://a.test/", cost=4)


@responses.activate
def test_cost_zero_is_free_and_a_plain_limit_takes_the_calls_cost() -> None:
    responses.add(responses.GET, "https://a.test/", body="ok")
    with syncfetch.Session(limits="4/minute", max_wait=0) as session:
        session.get("https://a.test/", cost=3)
        for _ in range(5):
            session.get("https://a.test/", cost=0)
        session.get("https://a.test/")
        with pytest.raises(RateLimitExceeded):
            session.get("https://a.test/")
    assert len(responses.calls) == 7


@responses.activate
def test_limits_can_be_assigned_a_mapping_and_back() -> None:
    responses.add(responses.GET, "https://a.test/x", body="ok")
    with syncfetch.Session(limits="100/second", max_wait=0) as session:
        session.limits = {"https://a.test/x": "1/minute"}
        session.get("https://a.test/x")
        with pytest.raises(RateLimitExceeded):
            session.get("https://a.test/x")
        assert "https://a.test/x" in repr(session)
        session.limits = "100/second"
        session.get("https://a.test/x")


# -- correcting a charge from the response ------------------------------------------------------


@responses.activate
def test_settle_corrects_the_charge_so_the_next_calls_see_the_true_balance() -> None:
    responses.add(responses.POST, "https://a.test/graphql", body="{}", headers={"X-Cost": "2"})
    route = Route("10/minute", cost=5, settle=lambda r: int(r.headers["X-Cost"]))
    with syncfetch.Session(limits={"https://a.test/graphql": route}, max_wait=0) as session:
        # 5 each up front, 2 each in truth: 2 + 5 and 4 + 5 fit in 10, 6 + 5 does not.
        for _ in range(3):
            session.post("https://a.test/graphql")
        with pytest.raises(RateLimitExceeded):
            session.post("https://a.test/graphql")
    assert len(responses.calls) == 3


@responses.activate
def test_settle_may_charge_more_than_was_taken() -> None:
    responses.add(responses.POST, "https://a.test/q", body="{}", headers={"X-Cost": "9"})
    route = Route("10/minute", settle=lambda r: int(r.headers["X-Cost"]))
    with syncfetch.Session(limits={"https://a.test/q": route}, max_wait=0) as session:
        session.post("https://a.test/q")  # took 1, cost 9
        session.post("https://a.test/q")  # 9 + 1 fit: took 1, cost 9 again (over: 18)
        with pytest.raises(RateLimitExceeded):
            session.post("https://a.test/q")


@responses.activate
def test_a_settle_that_fails_leaves_the_charge_and_never_breaks_the_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    responses.add(responses.GET, "https://a.test/x", body="not json")
    route = Route("2/minute", settle=lambda r: r.json()["cost"])
    with syncfetch.Session(limits={"https://a.test": route}, max_wait=0) as session:
        assert session.get("https://a.test/x").status_code == 200
        session.get("https://a.test/x")
        with pytest.raises(RateLimitExceeded):
            session.get("https://a.test/x")
    assert "the charge stands" in caplog.text


@responses.activate
def test_free_statuses_are_refunded_on_their_route() -> None:
    responses.add(responses.GET, "https://a.test/etag", status=304)
    responses.add(responses.GET, "https://a.test/new", status=200)
    route = Route("2/minute", free={304})
    with syncfetch.Session(limits={"https://a.test": route}, max_wait=0) as session:
        for _ in range(5):
            assert session.get("https://a.test/etag").status_code == 304
        session.get("https://a.test/new")
        session.get("https://a.test/new")
        with pytest.raises(RateLimitExceeded):
            session.get("https://a.test/new")


def test_bad_settle_and_free_are_refused() -> None:
    with pytest.raises(ValueError, match="settle"):
        Route("1/s", settle=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="free"):
        Route("1/s", free={99})
    with pytest.raises(ValueError, match="free"):
        Route("1/s", free="304")  # type: ignore[arg-type]


def test_a_json_settings_mapping_builds_the_routes() -> None:
    from syncfetch._settings import session_from_settings

    config = json.loads(
        '{"limits": {"*": "10/second", "https://a.test/graphql": '
        '{"limits": "900/minute", "cost": {"GET": 1, "*": 5}, "free": [304]}}, "max_wait": 2}'
    )
    with session_from_settings(config) as session:
        assert isinstance(session.limits, RouteTable)
        request = requests.Request("POST", "https://a.test/graphql").prepare()
        assert [c.cost for c in session.limits.match(request, 1)] == [1, 5]
    with pytest.raises(ValueError, match="FETCH"):
        session_from_settings({"limits": {"FETCH https://a.test": "1/s"}})


# -- priorities -------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_interactive_call_goes_ahead_of_a_waiting_batch(fake_api: StartAPI) -> None:
    api = fake_api("1/second")
    session = syncfetch.Session(limits={api.url: "1/second"}, max_concurrency=6, max_workers=5)
    batch = [api.url_for(f"/batch/{i}") for i in range(12)]
    done = threading.Event()

    def run_batch() -> None:
        for _ in session.map(batch, priority=0):
            pass
        done.set()

    runner = threading.Thread(target=run_batch)
    runner.start()
    try:
        threading.Event().wait(0.3)  # 1 batch item sent, 4 waiting for the next second
        assert session.get(api.url_for("/vip"), priority=5).status_code == 200
    finally:
        session.close()
        runner.join(10)
    paths = [a.path for a in api.arrivals()]
    assert paths.index("/vip") == 1  # the next second's token, ahead of 4 waiting items
    assert api.count(429) == 0


def test_bad_priorities_are_refused() -> None:
    with syncfetch.Session() as session:
        for bad in (1.5, True, "2", 10**7):
            with pytest.raises(ValueError, match="priority"):
                session.get("https://a.test/", priority=bad)

"""syncfetch.testing: the public strict fake API, its windows, dialects, record and fixture."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from hypothesis import example, given, settings
from hypothesis import strategies as st

import syncfetch
from syncfetch.testing import FakeAPI, Window, go_duration
from syncfetch.testing._meters import Meter

# -- windows, on an injected clock ---------------------------------------------------------


def _admit(meter: Meter, now: float, amount: float = 1) -> bool:
    if meter.wait(now, amount) > 0:
        return False
    meter.take(now, amount)
    return True


def test_sliding_window_is_exact() -> None:
    m = Meter(Window(3, 1.0), start=0.0)
    assert [_admit(m, t) for t in (0.0, 0.1, 0.2, 0.3)] == [True, True, True, False]
    assert m.wait(0.3, 1) == pytest.approx(0.7)  # the 0.0 entry leaves at 1.0
    assert not _admit(m, 0.99) and _admit(m, 1.0) and not _admit(m, 1.05)
    assert m.remaining(1.05) == 0 and m.reset_in(1.05) == pytest.approx(0.95)


def test_fixed_window_resets_on_its_boundary() -> None:
    m = Meter(Window(2, 10.0, kind="fixed"), start=100.0)
    assert [_admit(m, t) for t in (100.0, 109.0, 109.5)] == [True, True, False]
    assert m.wait(109.5, 1) == pytest.approx(0.5)
    assert _admit(m, 110.0) and _admit(m, 110.1) and not _admit(m, 119.9)


def test_leaky_bucket_refills_at_its_rate() -> None:
    m = Meter(Window(100, 10.0, kind="leaky", unit="cost"), start=0.0)  # 10 points/s
    assert _admit(m, 0.0, 60) and not _admit(m, 0.0, 50)
    assert m.wait(0.0, 50) == pytest.approx(1.0)
    assert _admit(m, 1.0, 50) and m.remaining(1.0) == pytest.approx(0)
    assert m.reset_in(1.0) == pytest.approx(10.0)
    assert m.wait(1.0, 101) == 10.0  # never fits: refused


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.012, "12ms"), (1, "1s"), (360, "6m0s"), (3723.5, "1h2m3.5s"), (7.66, "7.66s")],
)
def test_go_durations_round_trip(seconds: float, text: str) -> None:
    from syncfetch._dialects import parse_duration

    assert go_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="dialect"):
        FakeAPI(dialect="myspace")
    with pytest.raises(ValueError, match="window"):
        FakeAPI("1/s", window="tumbling")
    with pytest.raises(ValueError, match="fail_rate"):
        FakeAPI(fail_rate=2)
    with pytest.raises(ValueError, match="count"):
        FakeAPI((0, 1.0))
    with pytest.raises(TypeError, match="limit"):
        FakeAPI([b"1/s"])  # type: ignore[list-item]


# -- the server --------------------------------------------------------------------------------


def test_a_strict_limit_and_the_record() -> None:
    with FakeAPI("5/second", process=False) as api:
        with requests.Session() as s:
            statuses = [s.get(api.url_for(f"/items/{i}")).status_code for i in range(8)]
        assert statuses == [200] * 5 + [429] * 3
        assert api.count(status=429) == 3 and api.count() == 8
        assert api.max_in_window(1.0, statuses=[200]) == 5
        assert api.max_in_window(1.0) == 8  # refused ones count too
        assert len(api.arrivals("/items/*")) == 8 and api.statuses("/items/7") == [429]
        refused = requests.get(api.url_for("/x"))
        assert refused.headers["Retry-After"] == "1"
        api.clear()
        assert api.arrivals() == []
        requests.get(api.url_for("/last"))
    assert api.statuses() == [429] and api.url == ""  # the record outlives the server
    with api:  # started again: fresh windows
        assert requests.get(api.url_for("/again")).status_code == 200


@pytest.mark.slow
def test_syncfetch_keeps_a_fake_api_in_a_child_process_within_its_limit(
    fake_api: Callable[..., FakeAPI],
) -> None:
    api = fake_api("10/second", dialect="plain")
    assert api.process
    with syncfetch.Session("10/second", max_concurrency=8) as s, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: s.get(api.url_for(f"/n/{i}")).status_code, range(30)))
    assert results == [200] * 30
    assert api.count(status=429) == 0 and api.max_in_window(1.0) <= 10


def test_routes_costs_and_fixed_windows() -> None:
    api = FakeAPI(
        "100/minute",
        window="fixed",
        routes={"/search": "2/minute"},
        cost_limits=(10, 60.0),
        costs={"/heavy": 4},
        process=False,
    )
    with api, requests.Session() as s:
        assert [s.get(api.url_for("/search?q=1")).status_code for _ in range(3)] == [200, 200, 429]
        assert s.get(api.url_for("/other")).status_code == 200  # other routes unaffected
        heavy = [s.get(api.url_for("/heavy")).status_code for _ in range(3)]
        # cost 10 per minute: 3 searches and /other spent 4 points, two /heavy need 8
        assert heavy == [200, 429, 429]
        assert [a.cost for a in api.arrivals("/heavy")] == [4, 4, 4]


def test_faults_are_drawn_per_path_and_seed() -> None:
    def run() -> list[int]:
        with FakeAPI(fail_rate=0.5, seed=3, process=False) as api, requests.Session() as s:
            for _ in range(20):
                s.get(api.url_for("/f"))
            return api.statuses()

    first = run()
    assert first == run() and 0 < first.count(503) < 20


def test_idempotency_keys_are_replayed() -> None:
    with FakeAPI(dialect="stripe", process=False) as api, requests.Session() as s:
        url = api.url_for("/v1/charges")
        a = s.post(url, headers={"Idempotency-Key": "k1"})
        b = s.post(url, headers={"Idempotency-Key": "k1"})
        c = s.post(url, headers={"Idempotency-Key": "k2"})
        assert a.json()["id"] == b.json()["id"] != c.json()["id"]
        assert b.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in a.headers
        assert api.arrivals()[0].headers["idempotency-key"] == "k1"


@pytest.mark.parametrize(
    ("dialect", "kwargs", "refused", "headers"),
    [
        ("github", {}, 403, {"X-RateLimit-Remaining": "0", "X-RateLimit-Resource": "core"}),
        ("ietf", {}, 429, {"RateLimit": '"default";r=0;t=60'}),
        ("openai", {}, 429, {"x-ratelimit-remaining-requests": "0"}),
        ("discord", {}, 429, {"X-RateLimit-Global": "true", "X-RateLimit-Remaining": "0"}),
        ("salesforce", {}, 403, {"Sforce-Limit-Info": "api-usage=2/2"}),
        ("binance", {"cost_limits": "2/minute"}, 429, {"X-MBX-USED-WEIGHT-1M": "2"}),
    ],
)
def test_each_dialect_speaks_its_headers(
    dialect: str, kwargs: dict[str, object], refused: int, headers: dict[str, str]
) -> None:
    limits = None if "cost_limits" in kwargs else "2/minute"
    api = FakeAPI(limits, dialect=dialect, window="fixed", process=False, **kwargs)  # type: ignore[arg-type]
    with api, requests.Session() as s:
        answers = [s.get(api.url_for("/r")) for _ in range(3)]
    assert [r.status_code for r in answers[:2]] == [200, 200]
    last = answers[2]
    assert last.status_code == refused
    for name, value in headers.items():
        assert last.headers[name] == value, name


def test_binance_bans_a_client_that_keeps_going() -> None:
    api = FakeAPI(
        dialect="binance", cost_limits="2/minute", ban_after=2, ban_seconds=300, process=False
    )
    with api, requests.Session() as s:
        got = [s.get(api.url_for("/api/v3/ticker")).status_code for _ in range(7)]
        assert got == [200, 200, 429, 429, 418, 418, 418]
        assert s.get(api.url_for("/x")).headers["Retry-After"] in ("299", "300")


def test_shopify_throttles_with_200_and_a_cost_body() -> None:
    api = FakeAPI(
        dialect="shopify",
        cost_limits=Window(100, 10.0, kind="leaky", unit="cost"),
        costs={"/admin/api/2024-01/graphql.json": 40},
        process=False,
    )
    with api, requests.Session() as s:
        url = api.url_for("/admin/api/2024-01/graphql.json")
        bodies = [s.post(url, json={"query": "{ shop { name } }"}).json() for _ in range(3)]
    assert bodies[0]["extensions"]["cost"]["actualQueryCost"] == 40
    assert bodies[2]["errors"][0]["extensions"]["code"] == "THROTTLED"
    assert bodies[2]["extensions"]["cost"]["throttleStatus"]["restoreRate"] == 10.0


def test_importing_syncfetch_does_not_import_pytest() -> None:
    code = "import sys, syncfetch, syncfetch.testing; assert 'pytest' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_fixture_is_registered_through_the_entry_point() -> None:
    from importlib.metadata import entry_points

    plugins = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert plugins.get("syncfetch") == "syncfetch.testing._plugin"


# -- properties of the windows (hypothesis): the fake is exact -------------------------------

arrival_gaps = st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=120)
amounts = st.integers(min_value=1, max_value=5)


@settings(max_examples=200, deadline=None)
@given(arrival_gaps, st.integers(1, 10), st.sampled_from([0.5, 1.0, 2.0]), amounts)
@example([0.0993, 0.5], 1, 0.5, 1)  # rounding: 0.0993 + 0.5 == 0.5993 - ulp (found by hypothesis)
def test_a_sliding_window_never_admits_more_than_its_count(
    gaps: list[float], count: int, seconds: float, amount: int
) -> None:
    meter = Meter(Window(count * amount, seconds, unit="cost"), start=0.0)
    now, admitted = 0.0, []
    for gap in gaps:
        now += gap
        if _admit(meter, now, amount):
            admitted.append(now)
    for i, t in enumerate(admitted):
        inside = [u for u in admitted[: i + 1] if u > t - seconds]
        assert len(inside) <= count


@settings(max_examples=200, deadline=None)
@given(arrival_gaps, st.integers(1, 10), st.sampled_from([0.5, 1.0, 2.0]))
def test_a_fixed_window_admits_its_count_per_aligned_window(
    gaps: list[float], count: int, seconds: float
) -> None:
    meter = Meter(Window(count, seconds, kind="fixed"), start=0.0)
    now, per_window = 0.0, dict[int, int]()
    for gap in gaps:
        now += gap
        wait = meter.wait(now, 1)
        if wait == 0:
            meter.take(now, 1)
            index = int(now // seconds)
            per_window[index] = per_window.get(index, 0) + 1
        else:  # refused only when the window is full, and told when the next one starts
            assert per_window.get(int(now // seconds), 0) == count
            assert 0 < wait <= seconds
    assert all(n <= count for n in per_window.values())


@settings(max_examples=200, deadline=None)
@given(arrival_gaps, st.integers(10, 100), st.sampled_from([1.0, 2.0]), amounts)
def test_a_leaky_bucket_never_overdraws(
    gaps: list[float], capacity: int, seconds: float, amount: int
) -> None:
    meter = Meter(Window(capacity, seconds, kind="leaky", unit="cost"), start=0.0)
    now, spent = 0.0, []
    for gap in gaps:
        now += gap
        if _admit(meter, now, amount):
            spent.append((now, amount))
    rate = capacity / seconds
    for i, (t, _) in enumerate(spent):
        for s, _ in spent[: i + 1]:
            used = sum(a for u, a in spent[: i + 1] if u >= s)
            assert used <= capacity + rate * (t - s) + 1e-6


def test_slack_stops_counting_arrivals_that_close_to_leaving_a_sliding_window() -> None:
    strict, slack = Meter(Window(2, 1.0), 0.0), Meter(Window(2, 1.0), 0.0, slack=0.1)
    for meter in (strict, slack):
        meter.take(0.0, 1)
        meter.take(0.0, 1)
    assert strict.wait(0.5, 1) == pytest.approx(0.5)
    assert slack.wait(0.5, 1) == pytest.approx(0.4)  # the window is 0.9 s long for it
    assert strict.wait(0.95, 1) == pytest.approx(0.05)
    assert slack.wait(0.95, 1) == 0.0


def test_fake_api_rejects_a_bad_slack() -> None:
    with pytest.raises(ValueError, match="slack"):
        FakeAPI(slack=-1.0)


def test_fake_api_reads_chunked_bodies_and_serves_any_method() -> None:
    with FakeAPI(process=False) as api, requests.Session() as s:
        chunked = s.post(api.url_for("/upload"), data=iter([b"ab", b"cd"]))
        after = s.get(api.url_for("/after"))  # same keep-alive connection: the body was read
        custom = s.request("PURGE", api.url_for("/cache"))
    assert [chunked.status_code, after.status_code, custom.status_code] == [200, 200, 200]
    assert [(a.method, a.path) for a in api.arrivals()] == [
        ("POST", "/upload"),
        ("GET", "/after"),
        ("PURGE", "/cache"),
    ]


def test_fake_api_stop_cuts_keep_alive_connections() -> None:
    api = FakeAPI(process=False).start()
    two = api.url_for("/two")
    with requests.Session() as s:
        assert s.get(api.url_for("/one")).status_code == 200
        api.stop()  # without the cut, the open connection's handler would still answer
        with pytest.raises(requests.ConnectionError):
            s.get(two)
    assert api.statuses() == [200]


def test_a_child_that_cannot_start_says_why(tmp_path: object) -> None:
    # A script without the ``if __name__ == "__main__"`` guard: the spawned child re-runs
    # it, and its own start is refused while it bootstraps. That start used to end in an
    # AssertionError from join() on a process that never started, hiding the reason.
    script = tmp_path / "unguarded.py"  # type: ignore[operator]
    script.write_text(
        "from syncfetch.testing import FakeAPI\n"
        "try:\n"
        "    FakeAPI(process=True).start()\n"
        "except RuntimeError as exc:\n"
        "    print('RuntimeError:', exc, flush=True)\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert "AssertionError" not in out.stderr + out.stdout
    assert out.stdout.startswith("RuntimeError")

"""Route patterns and matching (syncfetch._routes): examples and properties (hypothesis)."""

from __future__ import annotations

import contextlib

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from syncfetch import Route
from syncfetch._routes import RouteTable, parse_pattern

PROPERTY = settings(max_examples=200, deadline=None)


def prepared(method: str, url: str) -> requests.PreparedRequest:
    return requests.Request(method, url).prepare()


def keys(table: RouteTable, method: str, url: str, cost: int = 1) -> list[str]:
    return [c.key for c in table.match(prepared(method, url), cost)]


GITHUB = RouteTable(
    {
        "*": "10/second",
        "https://api.github.com": "5000/hour",
        "https://api.github.com/search/": "30/minute",
        "POST https://slack.com/api/chat.postMessage": "1/second",
        "https://api.stripe.com/v1/payment_intents/{id}": "1000/hour",
    }
)


def test_a_call_pays_its_origin_route_and_each_more_specific_one() -> None:
    assert keys(GITHUB, "GET", "https://api.github.com/search/code?q=x") == [
        "https://api.github.com:443",
        "https://api.github.com:443/search",
    ]
    assert keys(GITHUB, "GET", "https://api.github.com/users/x") == ["https://api.github.com:443"]


def test_path_prefixes_match_whole_segments() -> None:
    assert keys(GITHUB, "GET", "https://api.github.com/searching") == ["https://api.github.com:443"]
    assert keys(GITHUB, "GET", "https://api.github.com/search") == [
        "https://api.github.com:443",
        "https://api.github.com:443/search",
    ]


def test_host_and_scheme_are_case_insensitive_and_default_ports_filled_in() -> None:
    table = RouteTable({"HTTPS://API.Example.com:443/a": "1/second"})
    assert keys(table, "GET", "https://api.example.COM/a/b") == ["https://api.example.com:443/a"]
    assert keys(table, "GET", "https://api.example.com:8443/a") == []


def test_a_method_route_matches_only_that_method() -> None:
    post = keys(GITHUB, "POST", "https://slack.com/api/chat.postMessage")
    assert post == ["https://slack.com:443", "POST https://slack.com:443/api/chat.postMessage"]
    assert keys(GITHUB, "GET", "https://slack.com/api/chat.postMessage") == [
        "https://slack.com:443"
    ]


def test_each_id_value_gets_its_own_bucket() -> None:
    one = keys(GITHUB, "POST", "https://api.stripe.com/v1/payment_intents/pi_1/capture")
    two = keys(GITHUB, "GET", "https://api.stripe.com/v1/payment_intents/pi_2")
    assert one[1] != two[1] and one[0] == two[0]
    assert keys(GITHUB, "GET", "https://api.stripe.com/v1/payment_intents/") == [
        "https://api.stripe.com:443"
    ]


def test_without_star_unmatched_origins_are_not_limited() -> None:
    table = RouteTable({"https://api.github.com": "5000/hour"})
    assert keys(table, "GET", "https://example.com/") == []


def test_star_stands_in_for_an_origin_with_only_specific_routes() -> None:
    table = RouteTable({"*": "10/second", "https://a.test/search": "1/second"})
    assert keys(table, "GET", "https://a.test/search/x") == [
        "https://a.test:443",
        "https://a.test:443/search",
    ]


def test_costs_by_method_by_function_and_the_calls_own() -> None:
    table = RouteTable(
        {
            "https://a.test": "100/minute",
            "https://a.test/graphql": Route("900/minute", cost={"GET": 1, "*": 5}),
            "https://a.test/upload": Route("900/minute", cost=lambda r: len(r.body or b"")),
        }
    )
    costs = [c.cost for c in table.match(prepared("POST", "https://a.test/graphql"), 3)]
    assert costs == [3, 5]
    assert [c.cost for c in table.match(prepared("GET", "https://a.test/graphql"), 3)] == [3, 1]
    upload = requests.Request("PUT", "https://a.test/upload", data=b"12345").prepare()
    assert [c.cost for c in table.match(upload, 1)] == [1, 5]


@pytest.mark.parametrize(
    ("pattern", "limits", "why"),
    [
        ("api.github.com/search", "1/s", "expected"),
        ("https://a.test/{a}{b}", "1/s", "whole segment"),
        ("https://a.test/x{a}", "1/s", "whole segment"),
        ("https://a.test/{a}/{a}", "1/s", "used twice"),
        ("FETCH https://a.test", "1/s", "unknown method"),
        ("https://a.test/x?y=1", "1/s", "expected"),
        ("https://a.test//x", "1/s", "empty path segment"),
        ("https://a.test:99999", "1/s", "out of range"),
        ("https://a.test/x/../y", "1/s", "'..' segment"),
        ("https://a.test", "often", "invalid rate"),
        ("https://a.test", {"limits": "1/s", "cost": {"FETCH": 1}}, "unknown method"),
        ("https://a.test", {"limit": "1/s"}, "takes 'limits'"),
    ],
)
def test_bad_routes_raise_valueerror_naming_the_pattern(
    pattern: str, limits: object, why: str
) -> None:
    with pytest.raises(ValueError, match=why) as info:
        RouteTable({pattern: limits})
    assert repr(pattern) in str(info.value) or "FETCH" in str(info.value)


def test_two_spellings_of_one_route_are_refused() -> None:
    with pytest.raises(ValueError, match="name the same route"):
        RouteTable({"https://A.test:443/x/{id}": "1/s", "https://a.test/x/{name}/": "2/s"})


def test_a_table_of_routes_arguments_is_a_route() -> None:
    table = RouteTable({"https://a.test": {"limits": "1/s", "cost": {"GET": 2}}})
    assert [c.cost for c in table.match(prepared("GET", "https://a.test/x"), 1)] == [2]


def test_route_refuses_a_negative_cost() -> None:
    with pytest.raises(ValueError, match="cost"):
        Route("1/s", cost=-1)
    with pytest.raises(ValueError, match="whole number"):
        Route("1/s", cost={"GET": 1.5})  # type: ignore[dict-item]


# -- properties ---------------------------------------------------------------------------

segment = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.~", min_size=1, max_size=8
).filter(lambda s: s not in (".", ".."))
host = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z]{2,5}){0,2}", fullmatch=True)
scheme = st.sampled_from(["http", "https"])


def flip_case(text: str, flips: list[bool]) -> str:
    return "".join(
        c.upper() if f else c for c, f in zip(text, [*flips, *[False] * len(text)], strict=False)
    )


@PROPERTY
@given(st.text(max_size=60))
def test_any_pattern_parses_or_raises_valueerror(text: str) -> None:
    with contextlib.suppress(ValueError):
        RouteTable({text: "1/second"})


@PROPERTY
@given(st.text(max_size=80), st.sampled_from(["GET", "POST", "DELETE"]))
def test_matching_any_url_never_raises(url: str, method: str) -> None:
    request = requests.PreparedRequest()
    request.method, request.url = method, url
    GITHUB.match(request, 1)


@PROPERTY
@given(
    scheme,
    host,
    st.lists(segment, min_size=1, max_size=4),
    st.lists(segment, max_size=3),
    st.data(),
)
def test_a_url_matches_every_prefix_pattern_whatever_the_case(
    sch: str, hst: str, path: list[str], extra: list[str], data: st.DataObject
) -> None:
    pattern = f"{sch}://{hst}/" + "/".join(path)
    flips = data.draw(st.lists(st.booleans(), max_size=len(pattern)))
    table = RouteTable({flip_case(f"{sch}://{hst}", flips): "1/s", pattern: "2/s"})
    url = f"{sch}://{hst.upper()}/" + "/".join(path + extra)
    got = keys(table, "GET", url)
    port = 443 if sch == "https" else 80
    origin = f"{sch}://{hst}:{port}"
    assert got == [origin, origin + "/" + "/".join(path)]


@PROPERTY
@given(scheme, host, st.lists(segment, min_size=1, max_size=4), segment)
def test_a_longer_segment_never_matches_a_prefix(
    sch: str, hst: str, path: list[str], tail: str
) -> None:
    table = RouteTable({f"{sch}://{hst}/" + "/".join(path): "1/s"})
    url = f"{sch}://{hst}/" + "/".join([*path[:-1], path[-1] + tail])
    assert keys(table, "GET", url) == []


@PROPERTY
@given(host, segment, segment)
def test_each_value_of_a_name_is_its_own_bucket(hst: str, one: str, two: str) -> None:
    table = RouteTable({f"https://{hst}/items/{{id}}": "1/s"})
    first = keys(table, "GET", f"https://{hst}/items/{one}/x")
    second = keys(table, "GET", f"https://{hst}/items/{two}")
    assert len(first) == len(second) == 1
    assert (first == second) == (one == two)


@PROPERTY
@given(scheme, host, st.integers(min_value=1, max_value=65535))
def test_parsed_origins_are_lower_case_with_a_port(sch: str, hst: str, port: int) -> None:
    method, origin, segments = parse_pattern(f"{sch.upper()}://{hst.upper()}:{port}")
    assert (method, segments) == (None, ())
    assert origin == f"{sch}://{hst}:{port}"


def test_a_failing_cost_function_charges_the_calls_cost(caplog: pytest.LogCaptureFixture) -> None:
    def broken(request: object) -> int:
        raise KeyError("no such header")

    table = RouteTable({"https://api.example.com": Route("10/second", cost=broken)})
    bad = RouteTable({"https://api.example.com": Route("10/second", cost=lambda r: -1)})
    request = requests.Request("GET", "https://api.example.com/x").prepare()
    assert [c.cost for c in table.match(request, 3, True)] == [3]
    assert [c.cost for c in bad.match(request, 2, True)] == [2]
    assert sum("cost" in r.getMessage() for r in caplog.records) == 2

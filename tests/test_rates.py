import pytest
from pyrate_limiter import Duration, Rate

import syncfetch
from syncfetch._rates import normalize_limits


@pytest.mark.parametrize(
    ("text", "limit", "interval_ms"),
    [
        ("10/second", 10, 1000),
        ("10/s", 10, 1000),
        ("10 / sec", 10, 1000),
        ("500/minute", 500, 60_000),
        ("500/min", 500, 60_000),
        ("5000/hour", 5000, 3_600_000),
        ("5000/h", 5000, 3_600_000),
        ("100000/day", 100000, 86_400_000),
        ("100/10s", 100, 10_000),
        ("900/15min", 900, 900_000),
        ("3/1.5s", 3, 1500),
        ("10 per second", 10, 1000),
    ],
)
def test_parse_rate_forms(text: str, limit: int, interval_ms: int) -> None:
    rate = syncfetch.parse_rate(text)
    assert (rate.limit, rate.interval) == (limit, interval_ms)


@pytest.mark.parametrize("text", ["", "10", "ten/s", "10/fortnight", "0/s", "-1/s", "10/0s", "/s"])
def test_invalid_rate_names_the_value(text: str) -> None:
    with pytest.raises(ValueError) as info:
        syncfetch.parse_rate(text)
    assert repr(text) in str(info.value)


def test_redundant_longer_rate_is_dropped() -> None:
    # 10/s never lets 1000 through in a minute: the minute rate can never bind.
    assert [(r.limit, r.interval) for r in normalize_limits(["10/second", "1000/minute"])] == [
        (10, 1000)
    ]


def test_redundant_shorter_rate_is_dropped() -> None:
    assert [(r.limit, r.interval) for r in normalize_limits(["100/s", "50/min"])] == [(50, 60_000)]


def test_binding_rates_are_kept_in_order() -> None:
    rates = normalize_limits(["500/minute", "10/second", Rate(5000, Duration.HOUR)])
    assert [(r.limit, r.interval) for r in rates] == [(10, 1000), (500, 60_000), (5000, 3_600_000)]


def test_duplicate_interval_keeps_tightest() -> None:
    assert [(r.limit, r.interval) for r in normalize_limits(["10/s", "5/s"])] == [(5, 1000)]


def test_none_means_no_limit() -> None:
    assert normalize_limits(None) == []


def test_unorderable_rates_raise_clearly() -> None:
    # 19 per 1.5 s binds under 10/s yet averages faster: no valid ordering exists.
    with pytest.raises(ValueError, match="cannot be enforced together"):
        normalize_limits(["10/s", "19/1.5s"])


def test_non_string_rate_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="42"):
        normalize_limits([42])  # type: ignore[list-item]

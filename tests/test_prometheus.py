"""``syncfetch.prometheus``, against the real ``prometheus_client`` registry."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
import responses
from prometheus_client import CollectorRegistry, generate_latest

import syncfetch
import syncfetch.prometheus

URL = "http://api.test/items?api_key=s3cret"
KEY = "http://api.test:80"


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def test_counts_attempts_retries_429s_pauses_and_waits(mocked: responses.RequestsMock) -> None:
    mocked.get("http://api.test/items", status=429, headers={"Retry-After": "2"})
    mocked.get("http://api.test/items", status=200)
    mocked.get("http://down.test/", body=requests.ConnectionError("refused"))
    registry = CollectorRegistry()
    with syncfetch.Session(retry=syncfetch.RetryPolicy(retries=1)) as s:
        syncfetch.prometheus.instrument(s, registry)
        assert s.get(URL).status_code == 200
        with pytest.raises(requests.ConnectionError):
            s.get("http://down.test/")

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("syncfetch_attempts_total", key=KEY, outcome="429") == 1
    assert value("syncfetch_attempts_total", key=KEY, outcome="200") == 1
    assert (
        value("syncfetch_attempts_total", key="http://down.test:80", outcome="ConnectionError") == 2
    )
    assert value("syncfetch_retries_total", key=KEY, reason="429") == 1
    assert value("syncfetch_giveups_total", key="http://down.test:80") == 1
    assert value("syncfetch_responses_429_total", key=KEY) == 1
    assert value("syncfetch_pauses_total", key=KEY) == 1
    assert value("syncfetch_pause_seconds_total", key=KEY) == 2
    assert value("syncfetch_wait_seconds_count", key=KEY, kind="backoff") == 1
    # The retry waited out the pause its own 429 set (the wait's event; the test mode
    # skips the sleep itself).
    assert value("syncfetch_wait_seconds_count", key=KEY, kind="pause") == 1
    assert value("syncfetch_attempt_duration_seconds_count", key=KEY) == 2
    text = generate_latest(registry).decode()
    assert "s3cret" not in text and "api_key" not in text


def test_sessions_share_a_registry_and_keys_are_bounded(
    mocked: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(syncfetch.prometheus, "MAX_KEYS", 2)
    for host in "abcd":
        mocked.get(f"http://{host}.test/")
    registry = CollectorRegistry()
    with syncfetch.Session() as one, syncfetch.Session() as two:
        hook = syncfetch.prometheus.instrument(one, registry)
        syncfetch.prometheus.instrument(two, registry)
        one.get("http://a.test/")
        two.get("http://b.test/")
        one.get("http://c.test/")
        two.get("http://d.test/")
        one.remove_event_hook(hook)
        one.get("http://a.test/")  # no longer counted
    keys = {
        s.labels["key"]
        for metric in registry.collect()
        if metric.name == "syncfetch_attempts"
        for s in metric.samples
        if s.name == "syncfetch_attempts_total"
    }
    assert keys == {"http://a.test:80", "http://b.test:80", "(other)"}
    assert (
        registry.get_sample_value("syncfetch_attempts_total", {"key": "(other)", "outcome": "200"})
        == 2
    )
    assert (
        registry.get_sample_value(
            "syncfetch_attempts_total", {"key": "http://a.test:80", "outcome": "200"}
        )
        == 1
    )


def test_instrument_refuses_a_plain_requests_session() -> None:
    with pytest.raises(TypeError, match=r"syncfetch\.Session"):
        syncfetch.prometheus.instrument(requests.Session())  # type: ignore[arg-type]

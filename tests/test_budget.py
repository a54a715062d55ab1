"""The retry budget: retries paid for by successes, a fixed reserve for outages."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import syncfetch
from syncfetch._budget import MAX_KEYS, BudgetTracker, RetryBudget
from tests._server import ScriptedServer, Step


def test_a_retry_spends_and_a_success_refunds() -> None:
    tracker = BudgetTracker(RetryBudget(reserve=3))
    assert [tracker.try_spend("a") for _ in range(4)] == [True, True, True, False]
    assert tracker.try_spend("b") is True  # keys do not share tokens
    tracker.record_success("a")
    tracker.record_success("a")
    assert [tracker.try_spend("a") for _ in range(3)] == [True, True, False]


def test_refunds_never_bank_beyond_the_reserve() -> None:
    tracker = BudgetTracker(RetryBudget(reserve=2))
    assert tracker.try_spend("a")
    for _ in range(50):
        tracker.record_success("a")
    assert tracker.tokens("a") == 2
    assert [tracker.try_spend("a") for _ in range(3)] == [True, True, False]


def test_a_fractional_refund_needs_several_successes() -> None:
    tracker = BudgetTracker(RetryBudget(reserve=1, refund=0.5))
    assert tracker.try_spend("a")
    tracker.record_success("a")
    assert not tracker.try_spend("a")
    tracker.record_success("a")
    assert tracker.try_spend("a")


def test_matches_a_sequential_model() -> None:
    rng = random.Random(7)
    budget = RetryBudget(reserve=5, refund=0.5)
    tracker = BudgetTracker(budget)
    model = {"a": 5.0, "b": 5.0}
    for _ in range(5000):
        key = rng.choice("ab")
        if rng.random() < 0.55:
            expected = model[key] >= 1
            assert tracker.try_spend(key) is expected
            model[key] -= expected
        else:
            tracker.record_success(key)
            model[key] = min(5.0, model[key] + 0.5)
    assert tracker.tokens("a") == model["a"] and tracker.tokens("b") == model["b"]


def test_refunds_from_other_threads_count_even_after_they_end() -> None:
    tracker = BudgetTracker(RetryBudget(reserve=100))
    while tracker.try_spend("k"):
        pass

    def succeed() -> None:
        for _ in range(3):
            tracker.record_success("k")

    for _ in range(20):  # a server that starts a thread per request
        t = threading.Thread(target=succeed)
        t.start()
        t.join()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: succeed(), range(10)))
    assert tracker.tokens("k") == 90
    assert sum(tracker.try_spend("k") for _ in range(100)) == 90


def test_keys_are_bounded() -> None:
    tracker = BudgetTracker(RetryBudget(reserve=1))
    for i in range(MAX_KEYS + 5000):
        tracker.try_spend(f"http://h{i}:80")
    assert len(tracker._tokens) <= MAX_KEYS
    # Keys that filled up again are forgotten first.
    tracker = BudgetTracker(RetryBudget(reserve=1))
    for i in range(3000):
        tracker.try_spend(f"k{i}")
        tracker.record_success(f"k{i}")
    assert len(tracker._tokens) < 1100


def test_after_fork_starts_full() -> None:
    tracker = BudgetTracker(RetryBudget(reserve=1))
    assert tracker.try_spend("a") and not tracker.try_spend("a")
    tracker.after_fork()
    assert tracker.try_spend("a")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"reserve": -1},
        {"reserve": 1.5},
        {"reserve": True},
        {"refund": -0.1},
        {"refund": float("nan")},
        {"refund": float("inf")},
        {"refund": "1"},
    ],
)
def test_invalid_budget_values_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RetryBudget(**kwargs)  # type: ignore[arg-type]


def _flaky_scripts(server: ScriptedServer, calls: int, p: float, retries: int) -> int:
    """One path per call, each failing a geometric number of times (as an iid server would),
    cut at ``retries`` so every call can succeed within its retries: only a budget can
    fail one. Returns the number of 503s scripted."""
    rng = random.Random(34)
    failures = 0
    for i in range(calls):
        n = 0
        while n < retries and rng.random() < p:
            n += 1
        failures += n
        server.script(f"/c/{i}", *([Step(status=503)] * n), Step())
    return failures


def test_default_budget_lets_a_flaky_server_answer_every_call(server: ScriptedServer) -> None:
    calls, retries = 400, 8
    failures = _flaky_scripts(server, calls, 0.34, retries)
    assert failures > 0.2 * calls + 10 * 10  # more than the old budget allowed
    policy = syncfetch.RetryPolicy(retries=retries, backoff_base=0.01, backoff_max=0.05)
    with syncfetch.Session(retry=policy, max_concurrency=16) as s, ThreadPoolExecutor(16) as pool:
        statuses = list(
            pool.map(lambda i: s.get(server.url_for(f"/c/{i}")).status_code, range(calls))
        )
        assert statuses == [200] * calls
        assert s.stats.budget_exhausted == 0
    assert server.count() == calls + failures


def test_budget_caps_retries_during_an_outage(server: ScriptedServer) -> None:
    server.script("/down", Step(status=503))
    policy = syncfetch.RetryPolicy(retries=3, budget=RetryBudget(reserve=20))
    calls = 16 * 15
    with syncfetch.Session(retry=policy, max_concurrency=16) as s, ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda _: s.get(server.url_for("/down")), range(calls)))
        assert s.stats.budget_exhausted > 0
        # Without a budget: 4 x 240 = 960. With it: each call once, plus the reserve.
        assert server.count("/down") == calls + 20
        # Recovery: first attempts are never refused, and successes refill the budget.
        server.script("/down", Step())
        assert s.get(server.url_for("/down")).status_code == 200
        server.script("/back", Step(status=503), Step())
        assert s.get(server.url_for("/back")).status_code == 200

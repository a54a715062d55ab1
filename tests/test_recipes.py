"""The recipes in examples/recipes, each run against a fake provider speaking its dialect.

Each test runs the recipe's own functions against ``syncfetch.testing.FakeAPI`` configured
with that provider's documented headers and refusals (with windows of seconds, not hours),
and counts what the fake saw. Server-asked pauses are real here (not skipped as in the rest
of the suite): they are what the recipes rely on.
"""

from __future__ import annotations

import importlib.util
import sys
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import requests

import syncfetch
from syncfetch.testing import FakeAPI, Window

RECIPES = Path(__file__).resolve().parent.parent / "examples" / "recipes"
FakeFactory = Callable[..., FakeAPI]

pytestmark = pytest.mark.slow


def recipe(name: str) -> ModuleType:
    """Import examples/recipes/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _real_pauses() -> Iterator[None]:
    syncfetch.set_testing(False)
    yield
    syncfetch.set_testing(True)


def test_every_recipe_is_tested() -> None:
    tested = {name[len("test_") :].split("_")[0] for name in globals() if name.startswith("test_")}
    assert {p.stem for p in RECIPES.glob("*.py")} <= tested


def test_github(fake_api: FakeFactory) -> None:
    github = recipe("github")
    api = fake_api("20/2s", routes={"/search": "5/2s"}, dialect="github", window="fixed")
    with github.make_session("20/2s") as core, github.make_session("5/2s") as search:
        assert github.fetch_pages(core, api.url, "octo/repo", 30) == [200] * 30
        found = [search.get(api.url_for(f"/search/issues?q={n}")).status_code for n in range(8)]
    assert found == [200] * 8
    assert api.count(status=403) == 0
    assert api.max_in_window(2.0, "/repos/*") <= 20 and api.max_in_window(2.0, "/search/*") <= 5


def test_github_without_a_configured_limit_follows_the_headers(fake_api: FakeFactory) -> None:
    github = recipe("github")
    api = fake_api("10/2s", dialect="github", window="fixed")
    with github.make_session(None) as s:
        s.max_concurrency = 1
        statuses = github.fetch_pages(s, api.url, "octo/repo", 25)
    # The 10th answer of each window says remaining 0: the session holds the host until the
    # reset (epoch seconds, so up to a second early: a 403 there is retried after it).
    assert statuses == [200] * 25
    assert api.count(status=403) <= 3


def test_github_secondary_limit_403_with_retry_after_is_waited_out(fake_api: FakeFactory) -> None:
    github = recipe("github")
    api = fake_api("100/minute", routes={"/search": "3/2s"}, dialect="github", window="fixed")
    with github.make_session(None) as s:
        s.max_concurrency = 1
        statuses = [s.get(api.url_for(f"/search/code?q={n}")).status_code for n in range(5)]
    assert statuses == [200] * 5
    refused = api.count(status=403)
    assert refused == 1 and s.stats.retries == 1  # one 403 + Retry-After, paused, retried


def test_stripe(fake_api: FakeFactory) -> None:
    stripe = recipe("stripe")
    api = fake_api("20/second", dialect="stripe", fail_rate=0.2, lost_rate=0.2, seed=7)
    with stripe.make_session("20/second") as s:
        keys = [str(uuid.uuid4()) for _ in range(30)]
        answers = [stripe.create_charge(s, api.url, 100, key) for key in keys]
    assert [r.status_code for r in answers] == [200] * 30
    by_key: dict[str, list[int]] = defaultdict(list)
    for a in api.arrivals():
        by_key[a.headers["idempotency-key"]].append(a.status)
    # Every 503 and lost answer was retried with the same key, and each key was charged
    # once: a charge whose answer was lost is replayed, not made again.
    assert set(by_key) == set(keys)
    assert all(statuses.count(200) == 1 and statuses[-1] == 200 for statuses in by_key.values())
    assert api.count(status=503) > 0 and api.count(status=0) > 0 and api.count(status=429) == 0
    assert len({r.json()["id"] for r in answers}) == 30
    replayed = [r for r in answers if r.headers.get("Idempotent-Replayed") == "true"]
    lost = [k for k, statuses in by_key.items() if 0 in statuses]
    assert len(replayed) == len(lost) > 0


def test_stripe_without_idempotency_keys_a_lost_answer_charges_twice(
    fake_api: FakeFactory,
) -> None:
    api = fake_api(dialect="stripe", lost_rate=0.3, seed=1)
    policy = syncfetch.RetryPolicy(retries=8, retry_non_idempotent=True)
    with syncfetch.Session(retry=policy) as s:
        ids = [s.post(api.url_for("/v1/charges")).json()["id"] for _ in range(10)]
    # The fake can fail: retried blindly, a POST whose answer was lost made a second charge.
    charges = api.count(status=200) + api.count(status=0)
    assert len(set(ids)) == 10 and charges > 10


def test_stripe_post_without_a_key_is_not_retried(fake_api: FakeFactory) -> None:
    stripe = recipe("stripe")
    api = fake_api(dialect="stripe", fail_rate=1.0)
    with stripe.make_session() as s:
        assert s.post(api.url_for("/v1/charges"), data={"amount": 1}).status_code == 503
    assert api.count() == 1


def test_shopify(fake_api: FakeFactory) -> None:
    shopify = recipe("shopify")
    assert shopify.rate_for(1000, 50, 10) == "100/20s"
    api = fake_api(
        dialect="shopify",
        cost_limits=Window(100, 2.0, kind="leaky", unit="cost"),
        costs={shopify.GRAPHQL: 10},
    )
    with shopify.make_session(bucket=100, restore=50, cost=10) as s:
        url = api.url_for(shopify.GRAPHQL)
        bodies = [shopify.retry_throttled(s, url, "{ shop { name } }") for _ in range(25)]
    assert all(b["extensions"]["cost"]["actualQueryCost"] == 10 for b in bodies)
    assert api.count() == 25  # not one THROTTLED answer


def test_shopify_throttled_answers_are_waited_out(fake_api: FakeFactory) -> None:
    shopify = recipe("shopify")
    api = fake_api(
        dialect="shopify",
        cost_limits=Window(100, 2.0, kind="leaky", unit="cost"),
        costs={shopify.GRAPHQL: 40},
    )
    with syncfetch.Session() as s:  # no limit: THROTTLED answers happen
        url = api.url_for(shopify.GRAPHQL)
        bodies = [shopify.retry_throttled(s, url, "{ products { id } }") for _ in range(5)]
    assert all("errors" not in b for b in bodies)
    assert api.count() > 5  # some were throttled, then waited out


def test_openai(fake_api: FakeFactory) -> None:
    openai = recipe("openai")
    assert str(openai.make_session(500, 200_000, 1000).limits) == str(
        syncfetch.Session("200/minute").limits
    )
    api = fake_api(
        (10, 2.0), cost_limits=(4000, 2.0), costs={"/v1/chat/completions": 500}, dialect="openai"
    )
    # Told only the request limit: the token limit (8 calls per 2 s) is read from the headers.
    with syncfetch.Session("10/2s", max_concurrency=1) as s:
        answers = [openai.complete(s, api.url, f"q{n}").status_code for n in range(20)]
        assert s.stats.cooldowns >= 2
    assert answers == [200] * 20
    assert api.count(status=429) == 0


def test_discord(fake_api: FakeFactory) -> None:
    discord = recipe("discord")
    api = fake_api(
        "50/second", routes={"/channels/1/messages": "5/2s"}, dialect="discord", window="fixed"
    )
    with discord.make_session() as s:
        s.max_concurrency = 1
        assert discord.send_messages(s, api.url, 1, 12) == [200] * 12
        assert s.stats.cooldowns >= 2
    assert api.count(status=429) == 0
    # Fixed windows: 5 at the end of one and 5 at the start of the next fall in one 2 s span.
    assert api.max_in_window(2.0, "/channels/1/messages") <= 10


def test_salesforce(fake_api: FakeFactory, caplog: pytest.LogCaptureFixture) -> None:
    salesforce = recipe("salesforce")
    api = fake_api(Window(10, 86400.0, kind="fixed"), dialect="salesforce")
    with salesforce.make_session("100/minute") as s:
        statuses = salesforce.query_all(s, api.url, [f"SELECT Id LIMIT {n}" for n in range(13)])
    # The 10th answer says api-usage=10/10: the rest fail fast and are never sent.
    assert statuses == [200] * 10 + [0] * 3
    assert api.count() == 10 and api.count(status=403) == 0
    assert any("10 of 10" in r.getMessage() for r in caplog.records)


def test_binance(fake_api: FakeFactory) -> None:
    binance = recipe("binance")
    api = fake_api(
        dialect="binance",
        cost_limits=(40, 2.0),
        costs={"/api/v3/depth": 5},
        ban_after=2,
        ban_seconds=120,
    )
    with binance.make_session(40, 5, "2s") as s:
        statuses = binance.order_books(s, api.url, [f"S{n}USDT" for n in range(20)])
    assert statuses == [200] * 20
    assert api.count(status=429) == 0 and api.count(status=418) == 0


def test_binance_retry_after_keeps_an_unconfigured_client_from_a_ban(
    fake_api: FakeFactory,
) -> None:
    api = fake_api(dialect="binance", cost_limits=(20, 2.0), costs={"/api": 5}, ban_after=2)
    with requests.Session() as plain:
        naive = [plain.get(api.url_for("/api/v3/depth")).status_code for _ in range(8)]
    assert 418 in naive  # a client that ignores Retry-After gets banned
    api2 = fake_api(dialect="binance", cost_limits=(20, 2.0), costs={"/api": 5}, ban_after=2)
    with syncfetch.Session(max_concurrency=1) as s:
        statuses = [s.get(api2.url_for("/api/v3/depth")).status_code for _ in range(8)]
    assert statuses == [200] * 8
    assert api2.count(status=418) == 0 and api2.count(status=429) <= 2

"""Shopify GraphQL Admin API: a bucket of query cost points.

Shopify documents (shopify.dev, "Shopify API rate limits"): each app-store pair has a bucket
of 1,000 cost points refilled at 50 points per second (standard plans; more on Plus). A query
costs points (``extensions.cost.requestedQueryCost`` and ``actualQueryCost`` in the answer);
a query that does not fit is answered **200** with a ``THROTTLED`` error, and
``extensions.cost.throttleStatus`` says what is available and the restore rate.

What works today: syncfetch has no per-call cost yet (a separate issue), so translate the
bucket into a request rate for your typical query cost: a bucket of ``B`` points refilled at
``R`` per second, queries costing ``C``, is at most ``B // C`` queries in any ``B / R``
seconds (that never overdraws the bucket). Because a throttle is a 200, syncfetch cannot see
it: check the body and wait as ``throttleStatus`` says (``retry_throttled`` below).

Run ``python examples/recipes/shopify.py``: a fake shop with a 100-point bucket refilled at 50
points per second, queries costing 10.
"""

from __future__ import annotations

import time
from typing import Any

import syncfetch
from syncfetch.testing import FakeAPI, Window

GRAPHQL = "/admin/api/2024-10/graphql.json"


def rate_for(bucket: int, restore: float, cost: int) -> str:
    """The request rate that keeps queries of ``cost`` within the bucket: ``"100/20s"``."""
    return f"{bucket // cost}/{max(1, round(bucket / restore))}s"


def make_session(bucket: int = 1000, restore: float = 50.0, cost: int = 10) -> syncfetch.Session:
    """A session sized for queries of about ``cost`` points."""
    return syncfetch.Session(rate_for(bucket, restore, cost), max_concurrency=4)


def retry_throttled(
    session: syncfetch.Session, url: str, query: str, attempts: int = 5
) -> dict[str, Any]:
    """Run one query, waiting out ``THROTTLED`` answers as ``throttleStatus`` says."""
    for _ in range(attempts):
        body: dict[str, Any] = session.post(url, json={"query": query}).json()
        errors = body.get("errors") or []
        if not any(e.get("extensions", {}).get("code") == "THROTTLED" for e in errors):
            return body
        cost = body["extensions"]["cost"]
        status = cost["throttleStatus"]
        missing = cost["requestedQueryCost"] - status["currentlyAvailable"]
        time.sleep(min(60.0, max(0.0, missing / status["restoreRate"])))
    return body


def main() -> None:
    bucket = Window(100, 2.0, kind="leaky", unit="cost")  # 100 points, refilled at 50/s
    fake = FakeAPI(dialect="shopify", cost_limits=bucket, costs={GRAPHQL: 10})
    with fake as api, make_session(bucket=100, restore=50, cost=10) as s:
        bodies = [retry_throttled(s, api.url_for(GRAPHQL), "{ shop { name } }") for _ in range(30)]
        spent = sum(b["extensions"]["cost"]["actualQueryCost"] or 0 for b in bodies)
        print(f"30 queries, {spent} points spent, {api.count()} requests sent")


if __name__ == "__main__":
    main()

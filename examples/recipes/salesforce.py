"""Salesforce REST API: an allowance of calls per 24 hours, reported in ``Sforce-Limit-Info``.

Salesforce documents (developer.salesforce.com, "API Request Limits and Allocations"): an
org has a number of API calls per rolling 24 hours (15,000 plus more per licence), shared by
every client of the org; every response carries ``Sforce-Limit-Info: api-usage=25/15000``
(used / allowed); once it is spent, calls get 403 with ``REQUEST_LIMIT_EXCEEDED``.

syncfetch reads ``Sforce-Limit-Info``: when the usage reaches the allowance, the host is held
(60 s at a time, at most ``retry_after_max``, then the next call probes), so with a
``max_wait`` your code gets ``RateLimitExceeded`` at once instead of spending calls on 403s.
Give each client its share of the allowance as a limit, and watch the usage.

Run ``python examples/recipes/salesforce.py``: a fake org allowing 10 calls a day.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import requests

import syncfetch
from syncfetch.testing import FakeAPI, Window

log = logging.getLogger(__name__)


def make_session(share: str = "500/hour") -> syncfetch.Session:
    """A session limited to this client's share of the org's allowance."""
    session = syncfetch.Session(share, max_concurrency=4, max_wait=5.0)
    token = os.environ.get("SALESFORCE_ACCESS_TOKEN")
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    session.hooks["response"].append(warn_on_usage)
    return session


def warn_on_usage(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    """Log when the org has used 80% of its allowance (a response hook)."""
    used, _, allowed = response.headers.get("Sforce-Limit-Info", "").partition("/")
    used = used.rpartition("=")[2]
    if used.isdigit() and allowed.isdigit() and int(allowed) and int(used) >= 0.8 * int(allowed):
        log.warning("Salesforce API usage at %s of %s", used, allowed)


def query_all(session: syncfetch.Session, base: str, soql: list[str]) -> list[int]:
    """Run queries until done or the allowance is spent; returns each status (0: not sent)."""
    statuses = []
    for q in soql:
        try:
            statuses.append(
                session.get(f"{base}/services/data/v61.0/query", params={"q": q}).status_code
            )
        except syncfetch.RateLimitExceeded:
            statuses.append(0)  # the allowance is spent: nothing was sent
    return statuses


def main() -> None:
    fake = FakeAPI(Window(10, 86400.0, kind="fixed"), dialect="salesforce")
    with fake as api, make_session("100/minute") as s:
        statuses = query_all(
            s, api.url, [f"SELECT Id FROM Account LIMIT {n}" for n in range(1, 14)]
        )
        print(
            f"{statuses.count(200)} queries answered, {statuses.count(0)} not sent; "
            f"{api.count(status=403)} x 403 at the fake org"
        )


if __name__ == "__main__":
    main()

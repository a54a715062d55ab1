"""Binance spot API: request weight per minute, 429 and 418 bans.

Binance documents (developers.binance.com, "General API Information"): each endpoint has a
weight, and an IP may use a weight of 6,000 per minute (``REQUEST_WEIGHT`` in
``/api/v3/exchangeInfo``); every response reports ``X-MBX-USED-WEIGHT-1M``. Past the limit: a
429 with ``Retry-After``; an IP that keeps sending after 429s is banned with a **418** and a
``Retry-After`` of 2 minutes up to 3 days.

syncfetch pauses the host on a 429 or 418 with ``Retry-After`` and retries after it; a ban
longer than ``retry_after_max`` ends the call at once with the 418, and nothing more is sent
to the host until it ends (up to ``retry_after_max`` at a time). Weights are costs per call,
which syncfetch cannot charge yet (a separate issue): limit requests to
``6000 // weight`` per minute for the endpoint you call most, and log the used weight.

Run ``python examples/recipes/binance.py``: a fake exchange allowing a weight of 40 per 2 s,
the order book costing 5.
"""

from __future__ import annotations

import syncfetch
from syncfetch.testing import FakeAPI

API = "https://api.binance.com"


def make_session(
    weight_limit: int = 6000, weight: int = 1, window: str = "minute"
) -> syncfetch.Session:
    """A session at ``weight_limit // weight`` requests per window."""
    return syncfetch.Session(
        f"{max(1, weight_limit // weight)}/{window}",
        max_concurrency=4,
        retry=syncfetch.RetryPolicy(retries=3, retry_after_max=300),
    )


def order_books(session: syncfetch.Session, base: str, symbols: list[str]) -> list[int]:
    """Fetch the order book of each symbol; returns each status."""
    urls = [f"{base}/api/v3/depth?symbol={s}&limit=100" for s in symbols]
    return [r.response.status_code if r.response is not None else 0 for r in session.map(urls)]


def main() -> None:
    fake = FakeAPI(
        dialect="binance",
        cost_limits=(40, 2.0),
        costs={"/api/v3/depth": 5},
        ban_after=2,
        ban_seconds=120,
    )
    with fake as api, make_session(40, 5, "2s") as s:
        statuses = order_books(s, api.url, [f"SYM{n}USDT" for n in range(24)])
        print(
            f"{statuses.count(200)} of 24 order books; {api.count(status=429)} x 429, "
            f"{api.count(status=418)} x 418"
        )


if __name__ == "__main__":
    main()

"""Stripe: 100 requests per second, and POST retries made safe with ``Idempotency-Key``.

Stripe documents (docs.stripe.com, "Rate limits" and "Idempotent requests"): about 100
read and write operations per second in live mode (25 in test mode), answered with 429
above it (no ``Retry-After``); an ``Idempotency-Key`` header on a POST lets a retry of it
return the first result instead of charging twice (replays carry ``Idempotent-Replayed``).

syncfetch retries a POST only when it carries an ``Idempotency-Key`` (sent unchanged on every
attempt), so give each logical operation its own key. A refused connection or connect timeout
is retried even without one: nothing was sent.

Run ``python examples/recipes/stripe.py``: a fake Stripe at 20/s failing 20% of requests.
"""

from __future__ import annotations

import os
import uuid

import requests

import syncfetch
from syncfetch.testing import FakeAPI

API = "https://api.stripe.com"


def make_session(limits: str = "100/second") -> syncfetch.Session:
    """A session for Stripe; use ``"25/second"`` in test mode."""
    session = syncfetch.Session(
        limits,
        max_concurrency=16,
        retry=syncfetch.RetryPolicy(retries=5, backoff_base=0.1, backoff_max=5),
    )
    key = os.environ.get("STRIPE_API_KEY")
    if key:
        session.auth = (key, "")
    return session


def create_charge(
    session: syncfetch.Session, base: str, amount: int, key: str | None = None
) -> requests.Response:
    """Create one charge; every retry of it carries the same ``Idempotency-Key``."""
    return session.post(
        f"{base}/v1/charges",
        data={"amount": amount, "currency": "usd", "source": "tok_visa"},
        headers={"Idempotency-Key": key or str(uuid.uuid4())},
    )


def main() -> None:
    with (
        FakeAPI("20/second", dialect="stripe", fail_rate=0.2) as api,
        make_session("20/second") as s,
    ):
        futures = [
            s.submit(
                "POST", api.url_for("/v1/charges"), headers={"Idempotency-Key": str(uuid.uuid4())}
            )
            for _ in range(40)
        ]
        statuses = [f.result().status_code for f in futures]
        print(
            f"{statuses.count(200)} of 40 charges created; {api.count()} requests, "
            f"{api.count(status=503)} x 503 retried, {api.count(status=429)} x 429"
        )


if __name__ == "__main__":
    main()

"""Stripe: 100 requests per second, and POST retries made safe with ``Idempotency-Key``.

Stripe documents (docs.stripe.com, "Rate limits" and "Idempotent requests"): about 100
read and write operations per second in live mode (25 in test mode), answered with 429
above it (no ``Retry-After``); an ``Idempotency-Key`` header on a POST lets a retry of it
return the first result instead of charging twice (replays carry ``Idempotent-Replayed``).

syncfetch retries a POST only when it carries an ``Idempotency-Key`` (sent unchanged on every
attempt), so give each logical operation its own key. A refused connection or connect timeout
is retried even without one: nothing was sent.

Run ``python examples/recipes/stripe.py``: a fake Stripe at 20/s that fails 20% of requests
with a 503 and loses the answer to 10% more after charging: those retries are replayed, not
charged again.
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
    fake = FakeAPI("20/second", dialect="stripe", fail_rate=0.2, lost_rate=0.1)
    with fake as api, make_session("20/second") as s:
        charge = api.url_for("/v1/charges")
        futures = [
            s.submit("POST", charge, headers={"Idempotency-Key": str(uuid.uuid4())})
            for _ in range(40)
        ]
        answers = [f.result() for f in futures]
        created = sum(r.status_code == 200 for r in answers)
        replayed = sum(r.headers.get("Idempotent-Replayed") == "true" for r in answers)
        print(
            f"{created} of 40 charges created; {api.count()} requests, "
            f"{api.count(status=503)} x 503 and {api.count(status=0)} lost answers retried; "
            f"{replayed} charges replayed, not made twice"
        )


if __name__ == "__main__":
    main()

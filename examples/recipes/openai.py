"""OpenAI API: requests per minute and tokens per minute.

OpenAI documents (platform.openai.com, "Rate limits"): limits on requests per minute (RPM)
and tokens per minute (TPM), by model and usage tier, reported on every response in
``x-ratelimit-limit-requests``/``-tokens``, ``x-ratelimit-remaining-requests``/``-tokens`` and
``x-ratelimit-reset-requests``/``-tokens``, the last as durations such as ``6m0s`` or
``12ms``; above them, a 429.

syncfetch reads those headers: when either remaining count reaches 0, every call to the host
waits for the matching reset (the longer one if both are spent). Token counts are costs per
call, which syncfetch cannot charge yet (a separate issue): configure the RPM as the limit,
or ``TPM // tokens_per_call`` if that is lower, and let the headers catch the rest.

Run ``python examples/recipes/openai.py``: a fake API allowing 10 requests and 4,000 tokens
per 2 s, each completion costing 500 tokens: the token limit binds first.
"""

from __future__ import annotations

import os

import requests

import syncfetch
from syncfetch.testing import FakeAPI

API = "https://api.openai.com"


def make_session(
    rpm: int = 500, tpm: int = 200_000, tokens_per_call: int = 1000
) -> syncfetch.Session:
    """A session whose limit is the tighter of RPM and TPM / tokens per call."""
    per_minute = max(1, min(rpm, tpm // tokens_per_call))
    session = syncfetch.Session(
        f"{per_minute}/minute",
        max_concurrency=8,
        retry=syncfetch.RetryPolicy(retries=4, retry_after_max=90, deadline=300),
        timeout=(3.05, 120),
    )
    key = os.environ.get("OPENAI_API_KEY")
    if key:
        session.headers["Authorization"] = f"Bearer {key}"
    return session


def complete(session: syncfetch.Session, base: str, prompt: str) -> requests.Response:
    """One chat completion."""
    return session.post(
        f"{base}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]},
        headers={"Idempotency-Key": os.urandom(8).hex()},  # makes the POST retryable
    )


def main() -> None:
    fake = FakeAPI(
        (10, 2.0), cost_limits=(4000, 2.0), costs={"/v1/chat/completions": 500}, dialect="openai"
    )
    # Per 2 s windows in the fake; the session is told only the request limit.
    with fake as api, syncfetch.Session("10/2s", max_concurrency=2) as s:
        answers = [complete(s, api.url, f"question {n}").status_code for n in range(24)]
        print(
            f"{answers.count(200)} of 24 completions; {api.count(status=429)} x 429; "
            f"pauses from x-ratelimit-reset-tokens: {s.stats.cooldowns}"
        )


if __name__ == "__main__":
    main()

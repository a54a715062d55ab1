"""Discord API: per-route buckets and a global limit.

Discord documents (discord.com/developers, "Rate Limits"): each route belongs to a bucket,
named by ``X-RateLimit-Bucket``, with ``X-RateLimit-Limit``, ``-Remaining``, ``-Reset`` (epoch
seconds, with decimals) and ``-Reset-After`` (seconds, with decimals); a global limit of 50
requests per second per bot; past either, a 429 with ``Retry-After`` and a body whose
``retry_after`` has decimals. ``X-RateLimit-Scope`` says which limit it was.

syncfetch reads ``X-RateLimit-Remaining: 0`` with ``X-RateLimit-Reset-After`` and holds the
host until the bucket resets, and names the bucket in its log line. Its buckets are per host,
so a spent route bucket holds the whole host: give a busy route (sending messages to one
channel) its own session, with the route's limit, beside a session for everything else.

Run ``python examples/recipes/discord.py``: a fake Discord whose message route allows 5
messages per 2 s.
"""

from __future__ import annotations

import os

import syncfetch
from syncfetch.testing import FakeAPI

API = "https://discord.com/api/v10"


def make_session(limits: str | None = "50/second") -> syncfetch.Session:
    """A session for a bot: the global limit, and the headers for each route's bucket."""
    session = syncfetch.Session(limits, max_concurrency=4, retry=syncfetch.RetryPolicy(retries=4))
    token = os.environ.get("DISCORD_BOT_TOKEN")
    if token:
        session.headers["Authorization"] = f"Bot {token}"
    return session


def send_messages(session: syncfetch.Session, base: str, channel: int, n: int) -> list[int]:
    """Send ``n`` messages to one channel; returns each status."""
    url = f"{base}/channels/{channel}/messages"
    return [session.post(url, json={"content": f"message {i}"}).status_code for i in range(n)]


def main() -> None:
    fake = FakeAPI(
        "50/second", routes={"/channels/1/messages": "5/2s"}, dialect="discord", window="fixed"
    )
    with fake as api, make_session() as s:
        statuses = send_messages(s, api.url, 1, 12)
        print(
            f"{statuses.count(200)} of 12 messages sent; {api.count(status=429)} x 429; "
            f"{s.stats.cooldowns} pauses from X-RateLimit-Reset-After"
        )


if __name__ == "__main__":
    main()

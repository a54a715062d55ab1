"""GitHub REST API: primary and secondary rate limits.

GitHub documents (docs.github.com, "Rate limits for the REST API"):

- a primary limit of 5,000 requests per hour for an authenticated user, reported on every
  response in ``X-RateLimit-Limit``, ``-Remaining``, ``-Used`` and ``-Reset`` (epoch seconds);
  past it, a 403 (or 429) with ``X-RateLimit-Remaining: 0``;
- secondary limits (no more than 100 concurrent requests, 900 points per minute per
  endpoint, 30 search requests per minute...), answered with 403 or 429 and ``Retry-After``.

syncfetch reads all of this: a response with ``X-RateLimit-Remaining: 0`` holds every call to
the host until ``X-RateLimit-Reset``; a 403 with remaining 0, or with ``Retry-After``, is
retried like a 429 after the wait. Give the search API its own session: its limit is
per route, and syncfetch's buckets are per host.

Run ``python examples/recipes/github.py``: it starts a fake GitHub on 127.0.0.1 (20 requests
per 2 s fixed window, search 5 per 2 s) and lists 30 pages through it.
"""

from __future__ import annotations

import os

import syncfetch
from syncfetch.testing import FakeAPI

API = "https://api.github.com"


def make_session(limits: str | list[str] | None = "5000/hour") -> syncfetch.Session:
    """One session for the core API, shared by every thread."""
    session = syncfetch.Session(
        limits,
        max_concurrency=8,  # well under the 100 concurrent requests GitHub allows
        retry=syncfetch.RetryPolicy(retries=4, retry_after_max=120),
        max_wait=None,
    )
    session.headers.update(
        {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
    )
    token = os.environ.get("GITHUB_TOKEN")
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    return session


def fetch_pages(session: syncfetch.Session, base: str, repo: str, pages: int) -> list[int]:
    """Fetch ``pages`` pages of a repository's issues; returns each page's status."""
    urls = [f"{base}/repos/{repo}/issues?page={n}&per_page=100" for n in range(1, pages + 1)]
    return [r.response.status_code if r.ok and r.response else 0 for r in session.map(urls)]


def main() -> None:
    fake = FakeAPI("20/2s", routes={"/search": "5/2s"}, dialect="github", window="fixed")
    with fake as api, make_session("20/2s") as core, make_session("5/2s") as search:
        statuses = fetch_pages(core, api.url, "octo/repo", 30)
        found = [search.get(api.url_for(f"/search/issues?q=bug+{n}")).status_code for n in range(8)]
        print(f"issues pages: {statuses.count(200)} x 200; search: {found.count(200)} x 200")
        print(f"403s seen by the fake GitHub: {api.count(status=403)}")


if __name__ == "__main__":
    main()

"""Quickstart: 16 threads share one syncfetch.Session against a strict local API.

The script starts a fake API on 127.0.0.1 (``syncfetch.testing.FakeAPI``, in its own
process) that allows 20 requests per sliding second and answers 429 above that, then
fetches 100 URLs from 16 threads through ``syncfetch.Session("20/second")``. Run it with
``python3 examples/quickstart.py``.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import syncfetch
from syncfetch.testing import FakeAPI

LIMIT, WINDOW = 20, 1.0


def main() -> None:
    with FakeAPI((LIMIT, WINDOW)) as api:
        urls = [api.url_for(f"/items/{i}") for i in range(100)]
        with syncfetch.Session(f"{LIMIT}/second", max_concurrency=8) as session:
            start = time.monotonic()
            with ThreadPoolExecutor(16) as pool:
                statuses = list(pool.map(lambda u: session.get(u).status_code, urls))
            took = time.monotonic() - start
            stats = session.stats
        rejected = api.count(status=429)
        busiest = api.max_in_window(WINDOW)
    floor = (len(urls) - LIMIT) / LIMIT * WINDOW  # the first LIMIT go at once
    print(
        f"{len(urls)} GETs from 16 threads at {LIMIT}/s: "
        f"{statuses.count(200)} x 200, {rejected} x 429 seen by the server, "
        f"at most {busiest} in any second"
    )
    print(
        f"took {took:.2f} s; the limit allows {floor:.2f} s at best "
        f"(efficiency {floor / took:.2f}); waited {stats.token_wait:.1f} thread-seconds for tokens"
    )


if __name__ == "__main__":
    main()

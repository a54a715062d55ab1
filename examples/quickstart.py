"""Quickstart: 16 threads share one syncfetch.Session against a strict local API.

The script starts its own API on 127.0.0.1 that allows 20 requests per sliding
second and answers 429 above that, then fetches 100 URLs from 16 threads through
``syncfetch.Session("20/second")``. Run it with ``python3 examples/quickstart.py``.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import syncfetch

LIMIT, WINDOW = 20, 1.0


class StrictAPI(BaseHTTPRequestHandler):
    """Admits LIMIT requests per sliding WINDOW seconds; 429 with Retry-After above that."""

    protocol_version = "HTTP/1.1"
    arrivals: ClassVar[collections.deque[float]] = collections.deque()
    lock = threading.Lock()
    rejected = 0

    def do_GET(self) -> None:
        now = time.monotonic()
        with self.lock:
            while self.arrivals and self.arrivals[0] <= now - WINDOW:
                self.arrivals.popleft()
            admitted = len(self.arrivals) < LIMIT
            if admitted:
                self.arrivals.append(now)
            else:
                type(self).rejected += 1
        body = b'{"ok": true}' if admitted else b'{"error": "rate limited"}'
        self.send_response(200 if admitted else 429)
        if not admitted:
            self.send_header("Retry-After", "1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StrictAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    urls = [f"{base}/items/{i}" for i in range(100)]
    try:
        with syncfetch.Session(f"{LIMIT}/second", max_concurrency=8) as session:
            start = time.monotonic()
            with ThreadPoolExecutor(16) as pool:
                statuses = list(pool.map(lambda u: session.get(u).status_code, urls))
            took = time.monotonic() - start
            stats = session.stats
    finally:
        server.shutdown()
        server.server_close()
    floor = (len(urls) - LIMIT) / LIMIT * WINDOW  # the first LIMIT go at once
    print(
        f"{len(urls)} GETs from 16 threads at {LIMIT}/s: "
        f"{statuses.count(200)} x 200, {StrictAPI.rejected} x 429 seen by the server"
    )
    print(
        f"took {took:.2f} s; the limit allows {floor:.2f} s at best "
        f"(efficiency {floor / took:.2f}); waited {stats.token_wait:.1f} thread-seconds for tokens"
    )


if __name__ == "__main__":
    main()

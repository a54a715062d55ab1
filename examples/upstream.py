"""A strict demo upstream API for the examples: at most N requests per sliding second.

``GET /items/<id>`` answers ``{"id": <id>, "name": "item <id>"}``; above the limit it
answers 429 with ``Retry-After: 1``, as a real rate-limited API would. The examples
start one in a background thread; ``python examples/upstream.py [PORT]`` serves one
in the foreground (default port 8001) for an app run any other way.
"""

from __future__ import annotations

import collections
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class StrictUpstream:
    """The API on ``127.0.0.1:port`` (0: a free port), counting what it answered."""

    def __init__(self, limit: int = 20, window: float = 1.0, port: int = 0) -> None:
        self.limit, self.window = limit, window
        self.served = self.rejected = 0
        self._arrivals: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.upstream = self  # type: ignore[attr-defined]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def admit(self) -> bool:
        """Record an arrival; False when it is over the limit (and so not counted in it)."""
        now = time.monotonic()
        with self._lock:
            while self._arrivals and self._arrivals[0] <= now - self.window:
                self._arrivals.popleft()
            if len(self._arrivals) < self.limit:
                self._arrivals.append(now)
                self.served += 1
                return True
            self.rejected += 1
            return False

    def start(self) -> StrictUpstream:
        """Serve in a background (daemon) thread."""
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> StrictUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        upstream: StrictUpstream = self.server.upstream  # type: ignore[attr-defined]
        parts = self.path.strip("/").split("/")
        if not upstream.admit():
            self._send(429, {"error": "rate limited"}, {"Retry-After": "1"})
        elif len(parts) == 2 and parts[0] == "items" and parts[1].isdigit():
            self._send(200, {"id": int(parts[1]), "name": f"item {parts[1]}"})
        else:
            self._send(404, {"error": "not found"})

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    server = StrictUpstream(port=int(sys.argv[1]) if len(sys.argv) > 1 else 8001)
    print(f"strict upstream at {server.url}: {server.limit} requests per sliding second")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print(f"\nserved {server.served}, rejected {server.rejected} with 429")

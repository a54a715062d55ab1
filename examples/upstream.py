"""A strict demo upstream API for the examples: at most N requests per sliding second.

``GET /items/<id>`` answers ``{"id": <id>, "name": "item <id>"}``; above the limit it
answers 429 with ``Retry-After: 1``, as a real rate-limited API would. It is the fake API
of ``syncfetch.testing`` (the server behind ``FakeAPI``) with an answer of its own for
``/items/<id>``. The examples start one in a background thread; ``python
examples/upstream.py [PORT]`` serves one in the foreground (default port 8001) for an app
run any other way.
"""

from __future__ import annotations

import sys
from typing import Any

from syncfetch.testing import Window
from syncfetch.testing._server import FakeConfig, FakeServer


class StrictUpstream(FakeServer):
    """The API on ``127.0.0.1:port`` (0: a free port), counting what it answered."""

    def __init__(self, limit: int = 20, window: float = 1.0, port: int = 0) -> None:
        self.limit, self.window = limit, window
        super().__init__(FakeConfig(windows=(Window(limit, window),), port=port))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def served(self) -> int:
        """Requests admitted (answered 200, or 404 for a path that is not an item)."""
        return sum(1 for a in self.arrivals() if a.status == 200)

    @property
    def rejected(self) -> int:
        """Requests over the limit, answered 429 (and not counted in the window)."""
        return sum(1 for a in self.arrivals() if a.status == 429)

    def reply(self, method: str, path: str, decision: Any) -> tuple[int, dict[str, str], Any]:
        status, headers, body = decision.reply
        if status != 200:
            return status, headers, body
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "items" and parts[1].isdigit():
            return 200, headers, {"id": int(parts[1]), "name": f"item {parts[1]}"}
        return 404, headers, {"error": "not found"}

    def __enter__(self) -> StrictUpstream:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    server = StrictUpstream(port=int(sys.argv[1]) if len(sys.argv) > 1 else 8001)
    print(f"strict upstream at {server.url}: {server.limit} requests per sliding second")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print(f"\nserved {server.served}, rejected {server.rejected} with 429")

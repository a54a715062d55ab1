"""Route matching per call, with 1 and with 50 routes, next to a loopback GET (issue 14).

``RouteTable.match`` is what a session with a ``limits`` mapping adds to every attempt.
Printed, in microseconds: the median and p99 of one match (a request paying an origin
route and one ``{id}`` route among 1 or 50 routes on that origin), and the median of a
plain ``requests`` GET to a server on 127.0.0.1 (one keep-alive connection), for scale.

Run: ``python3 benchmarks/routes.py`` (a few seconds).
"""

from __future__ import annotations

import http.server
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import requests

from syncfetch._routes import RouteTable


def table(routes: int) -> RouteTable:
    mapping: dict[str, str] = {"https://api.example.com": "5000/hour"}
    for i in range(routes - 1):
        mapping[f"https://api.example.com/v1/things{i}/{{id}}"] = "100/minute"
    if routes > 1:
        mapping["POST https://api.example.com/v1/items/{id}"] = "10/second"
    return RouteTable(mapping)


def match_times(routes: int, calls: int = 20_000) -> tuple[float, float]:
    """Median and p99 of one match, in µs."""
    tbl = table(routes)
    request = requests.Request("POST", "https://api.example.com/v1/items/42?x=1").prepare()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        tbl.match(request, 1)
        times.append(time.perf_counter() - start)
    times.sort()
    return statistics.median(times) * 1e6, times[int(len(times) * 0.99)] * 1e6


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


def loopback_get(calls: int = 500) -> float:
    """Median of a plain requests GET to 127.0.0.1, in µs."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        with requests.Session() as session:
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                session.get(url).close()
                times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e6
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    for routes in (1, 50):
        median, p99 = match_times(routes)
        print(f"match, {routes:2d} route(s): median {median:6.1f} µs, p99 {p99:6.1f} µs")
    print(f"loopback GET (requests): median {loopback_get():8.1f} µs")


if __name__ == "__main__":
    main()

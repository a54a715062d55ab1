"""Flask + syncfetch: every request thread of a process shares one rate-limited session.

One command, ``python examples/flask_app.py``, starts a strict demo upstream (20 requests
per sliding second, 429 above that), serves this app with Flask's threaded server on a
free port, sends it 100 requests from 16 threads and prints what came back. With
prometheus_client installed, the app also serves the session's metrics at ``/metrics``.

Against a real API, serve ``app`` with gunicorn (threads share the session; each worker
process has its own, so with an in-memory limiter give each worker its share of the
API's limit, or use a shared backend)::

    cd examples && UPSTREAM_URL=https://api.example.com \\
        gunicorn --worker-class gthread --workers 1 --threads 8 --preload flask_app:app
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from flask import Flask
from upstream import StrictUpstream
from werkzeug.serving import make_server

import syncfetch.flask

app = Flask(__name__)
app.config["SYNCFETCH"] = {
    "limits": "20/second",  # the upstream's published limit
    "max_wait": 2.0,  # wait at most 2 s for a turn, then answer 503 + Retry-After
    "max_concurrency": 8,
}
app.config["UPSTREAM_URL"] = os.environ.get("UPSTREAM_URL", "http://127.0.0.1:8001")
session = syncfetch.flask.init_app(app)  # one session for this process, closed at exit

try:  # /metrics for Prometheus, when prometheus_client is installed
    import prometheus_client

    import syncfetch.prometheus
except ImportError:
    pass
else:
    syncfetch.prometheus.instrument(session)

    @app.get("/metrics")
    def metrics() -> Any:
        return prometheus_client.generate_latest(), {
            "Content-Type": prometheus_client.CONTENT_TYPE_LATEST
        }


@app.get("/items/<int:item_id>")
def item(item_id: int) -> Any:
    upstream = app.config["UPSTREAM_URL"]
    resp = syncfetch.flask.get_session().get(f"{upstream}/items/{item_id}")
    resp.raise_for_status()
    return resp.json()


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log lines
    with StrictUpstream(limit=20) as upstream:
        app.config["UPSTREAM_URL"] = upstream.url
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.port}"

        def get(i: int) -> int:
            return requests.get(f"{base}/items/{i}", timeout=10).status_code

        start = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            statuses = Counter(pool.map(get, range(100)))
        took = time.monotonic() - start
        server.shutdown()
    print(f"100 requests to the app from 16 threads in {took:.1f} s: {dict(statuses)}")
    print(f"the upstream answered 429: {upstream.rejected} times (200: {upstream.served})")


if __name__ == "__main__":
    main()

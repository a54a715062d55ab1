"""Celery tasks that share one rate limit through syncfetch (the Celery page's example).

The tasks module creates one ``syncfetch.Session`` at import; the prefork pool forks its
workers from there, and syncfetch resets its locks, pools and threads after a fork. With
``SYNCFETCH_STORE=redis://localhost:6379/1`` every worker (and machine) draws from one
limit; by default each process has its own in-memory limiter. Configured from the
environment: ``CELERY_BROKER_URL`` (default ``memory://``, for one process only),
``SYNCFETCH_STORE`` (default ``memory``) and ``API_URL``. Run a worker with
``celery -A celery_tasks worker`` from ``examples/``. ``tests/test_celery_example.py`` runs
the task in Celery's eager mode (no broker) against ``syncfetch.testing.FakeAPI``.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, Task

import syncfetch

app = Celery("tasks", broker=os.environ.get("CELERY_BROKER_URL", "memory://"))
API_URL = os.environ.get("API_URL", "https://api.example.com")
api = syncfetch.Session("40/second", store=os.environ.get("SYNCFETCH_STORE", "memory"), max_wait=30)


@app.task(bind=True, max_retries=5)
def fetch_item(self: Task, item_id: int) -> Any:
    """Fetch one item; with no token within ``max_wait``, Celery retries the task later."""
    try:
        resp = api.get(f"{API_URL}/items/{item_id}")
        resp.raise_for_status()
        return resp.json()
    except syncfetch.RateLimitExceeded as exc:  # nothing was sent: safe to try again
        raise self.retry(exc=exc, countdown=exc.retry_after or 5) from exc

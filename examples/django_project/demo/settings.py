"""Settings of the syncfetch demo project: only what the demo needs."""

from __future__ import annotations

import os

SECRET_KEY = "demo-only-not-a-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
# syncfetch.django: manage.py check validates SYNCFETCH; demo: its command, fetch_batch
INSTALLED_APPS = ["syncfetch.django", "demo"]
MIDDLEWARE = ["syncfetch.django.RateLimitExceededMiddleware"]
ROOT_URLCONF = "demo.urls"
WSGI_APPLICATION = "demo.wsgi.application"
DATABASES: dict[str, dict[str, str]] = {}  # the demo stores nothing
USE_TZ = True

# The API the views call; manage.py points this at its demo upstream.
UPSTREAM_URL = os.environ.get("UPSTREAM_URL", "http://127.0.0.1:8001")

# syncfetch.Session keyword arguments: one session per process, built on first use.
SYNCFETCH = {
    "limits": "20/second",  # the API's published limit
    "max_wait": 2.0,  # a view waits at most 2 s for its turn, then answers 503
    "max_concurrency": 8,
}

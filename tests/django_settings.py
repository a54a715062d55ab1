"""Django settings for the syncfetch tests: pytest-django and the gunicorn-served test app.

The gunicorn test passes its numbers through the environment (read at import, as a
real deployment would); in-process tests override ``SYNCFETCH`` with pytest-django's
``settings`` fixture.
"""

from __future__ import annotations

import os

SECRET_KEY = "syncfetch-tests-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
# No models or database: the integration needs none.
INSTALLED_APPS = ["syncfetch.django"]  # registers the SYNCFETCH system check
DATABASES: dict[str, dict[str, str]] = {}
MIDDLEWARE = ["syncfetch.django.RateLimitExceededMiddleware"]
ROOT_URLCONF = "tests._gunicorn"
USE_TZ = True

SYNCFETCH = {
    "limits": os.environ.get("SYNCFETCH_TEST_LIMITS") or None,
    "max_wait": float(os.environ.get("SYNCFETCH_TEST_MAX_WAIT", "0.5")),
    "max_concurrency": 8,
}
UPSTREAM_URL = os.environ.get("SYNCFETCH_TEST_UPSTREAM", "http://127.0.0.1:9")

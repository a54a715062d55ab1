import threading
import weakref

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

import syncfetch
from syncfetch.django import get_session

try:  # /metrics for Prometheus, when prometheus_client is installed
    import prometheus_client

    import syncfetch.prometheus
except ImportError:
    prometheus_client = None

_instrumented: weakref.WeakSet[syncfetch.Session] = weakref.WeakSet()
_instrument_lock = threading.Lock()  # guards _instrumented


def session() -> syncfetch.Session:
    """The process's session, counted in Prometheus metrics when prometheus_client is here."""
    s = get_session()
    if prometheus_client is not None and s not in _instrumented:
        with _instrument_lock:
            if s not in _instrumented:
                syncfetch.prometheus.instrument(s)
                _instrumented.add(s)
    return s


def metrics(request: HttpRequest) -> HttpResponse:
    """The session's metrics in Prometheus' text format (404 without prometheus_client)."""
    if prometheus_client is None:
        return HttpResponse(status=404)
    session()  # instrumented from the first scrape on, even before any call
    return HttpResponse(
        prometheus_client.generate_latest(), content_type=prometheus_client.CONTENT_TYPE_LATEST
    )


def item(request: HttpRequest, item_id: int) -> JsonResponse:
    """One item from the upstream API, within its rate limit whatever the traffic.

    Every thread of the process shares the session from ``get_session()``; a call that
    cannot get its turn within ``max_wait`` raises ``RateLimitExceeded``, which the
    middleware answers with 503 and ``Retry-After``.
    """
    resp = session().get(f"{settings.UPSTREAM_URL}/items/{item_id}")
    resp.raise_for_status()
    return JsonResponse(resp.json())

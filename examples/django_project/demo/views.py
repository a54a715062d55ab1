from django.conf import settings
from django.http import HttpRequest, JsonResponse

from syncfetch.django import get_session


def item(request: HttpRequest, item_id: int) -> JsonResponse:
    """One item from the upstream API, within its rate limit whatever the traffic.

    Every thread of the process shares the session from ``get_session()``; a call that
    cannot get its turn within ``max_wait`` raises ``RateLimitExceeded``, which the
    middleware answers with 503 and ``Retry-After``.
    """
    resp = get_session().get(f"{settings.UPSTREAM_URL}/items/{item_id}")
    resp.raise_for_status()
    return JsonResponse(resp.json())

"""Django integration: one rate-limited :class:`~syncfetch.Session` per process.

Settings::

    SYNCFETCH = {"limits": "10/second", "max_wait": 2.0}   # Session keyword arguments
    INSTALLED_APPS = [..., "syncfetch.django"]   # manage.py check validates SYNCFETCH
    MIDDLEWARE = [..., "syncfetch.django.RateLimitExceededMiddleware"]

In a view::

    from syncfetch.django import get_session

    def user(request, uid):
        resp = get_session().get(f"{API}/users/{uid}")
        return JsonResponse(resp.json())

Every thread of the process shares the one session, so they share its limits. A
view whose upstream call gives up waiting (``max_wait``) raises
:class:`~syncfetch.RateLimitExceeded`, and one whose shared backend is down raises
:class:`~syncfetch.BackendUnavailable`: the middleware turns both into a 503 with
``Retry-After``.

This module is never imported by ``syncfetch`` itself: Django stays optional.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

# No django-stubs needed: without them Django's names are Any to mypy.
from django.conf import settings  # type: ignore[import-untyped, import-not-found, unused-ignore]
from django.core import checks  # type: ignore[import-untyped, import-not-found, unused-ignore]
from django.core.signals import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
    setting_changed,
)
from django.http import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
    HttpRequest,
    HttpResponse,
    JsonResponse,
)

from ._exceptions import BackendUnavailable, RateLimitExceeded
from ._session import Session
from ._settings import (
    backend_error_body,
    backend_outages,
    check_settings,
    close_at_exit,
    error_body,
    log,
    retry_after_seconds,
    session_from_settings,
)

__all__ = [
    "SETTING",
    "RateLimitExceededMiddleware",
    "backend_unavailable_response",
    "check_syncfetch_setting",
    "get_session",
    "rate_limited_response",
]

#: Name of the Django setting holding the :class:`~syncfetch.Session` keyword arguments.
SETTING = "SYNCFETCH"

_session: Session | None = None
_lock = threading.Lock()


def get_session() -> Session:
    """The process's session, built from ``settings.SYNCFETCH`` on first use.

    Safe to call from any thread: the first callers race for a lock and exactly
    one session is built. Being lazy, it is built in each gunicorn/uWSGI worker
    after the fork, with or without ``--preload`` (a session built before a fork
    is reset in the child by syncfetch itself). It is closed at process exit, and
    rebuilt when ``settings.SYNCFETCH`` is changed by ``override_settings`` (tests).

    :returns: the session shared by every thread of this process.
    :raises ValueError: for unknown keys in ``settings.SYNCFETCH`` (all named) or
        invalid values (``manage.py check`` reports them first, see
        :func:`check_syncfetch_setting`).
    :raises TypeError: for a value of the wrong type, naming it.
    """
    global _session
    session = _session  # one read: the fast path takes no lock
    if session is not None:
        return session
    with _lock:
        if _session is None:
            _session = session_from_settings(
                getattr(settings, SETTING, None), source=f"settings.{SETTING}"
            )
            close_at_exit(_session)
        return _session


def _forget_session() -> None:
    """Drop (and close) the session so that the next :func:`get_session` builds anew."""
    global _session
    with _lock:
        old, _session = _session, None
    if old is not None:
        old.close()


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTING:
        _forget_session()


# Django's own caches listen to this signal too; it fires for override_settings and
# pytest-django's ``settings`` fixture, never in production.
setting_changed.connect(_on_setting_changed, dispatch_uid="syncfetch.django.setting_changed")


def check_syncfetch_setting(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """System check (``manage.py check``, and before ``runserver`` or ``migrate``):
    ``settings.SYNCFETCH`` must be valid :class:`~syncfetch.Session` arguments.

    Registered when this module is imported; list ``"syncfetch.django"`` in
    ``INSTALLED_APPS`` so that it is imported before the checks run. Nothing is built
    or connected: an unreachable Redis shows on the first request, not here.

    :returns: one ``syncfetch.E001`` error naming the bad key or value, or nothing.
    """
    try:
        check_settings(getattr(settings, SETTING, None), source=f"settings.{SETTING}")
    except (TypeError, ValueError) as exc:
        return [
            checks.Error(
                str(exc),
                hint="SYNCFETCH holds syncfetch.Session keyword arguments.",
                obj=f"settings.{SETTING}",
                id="syncfetch.E001",
            )
        ]
    return []


checks.register(check_syncfetch_setting, "syncfetch")


def _reset_lock_after_fork() -> None:
    # A thread of the parent may have held the lock at the fork; in the child that
    # thread does not exist, and the lock would never be released.
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_lock_after_fork)


def rate_limited_response(exc: RateLimitExceeded) -> HttpResponse:
    """503 with ``Retry-After`` and a small JSON body, for a :class:`RateLimitExceeded`.

    503 rather than 429: the client did nothing wrong, the upstream this site
    depends on is saturated. ``Retry-After`` is the limiter's estimate in whole
    seconds (1 when the wait was for a concurrency slot).

    :param exc: the exception raised by the view.
    :returns: the response.
    """
    seconds = retry_after_seconds(exc)
    log.info("syncfetch: answering 503, Retry-After %d: %s", seconds, exc)
    response = JsonResponse(error_body(seconds), status=503)
    response["Retry-After"] = str(seconds)
    return response


def backend_unavailable_response(exc: BackendUnavailable) -> HttpResponse:
    """503 with ``Retry-After`` and a small JSON body, for a :class:`BackendUnavailable`.

    ``Retry-After`` grows with the outage (1 s at first, up to 30 s); the first
    failure of an outage is logged as a WARNING, the others at DEBUG.

    :param exc: the exception raised by the view.
    :returns: the response.
    """
    seconds = backend_outages.record(exc)
    response = JsonResponse(backend_error_body(seconds), status=503)
    response["Retry-After"] = str(seconds)
    return response


class RateLimitExceededMiddleware:
    """Turns :class:`~syncfetch.RateLimitExceeded` and :class:`~syncfetch.BackendUnavailable`
    raised by a view into a 503.

    Add ``"syncfetch.django.RateLimitExceededMiddleware"`` to ``MIDDLEWARE``.
    Like every ``process_exception``, it sees exceptions from views only (not from
    other middleware); any other exception goes on to Django's usual handling.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """Answer 503 for :class:`RateLimitExceeded` and :class:`BackendUnavailable`;
        ``None`` (not handled) for anything else."""
        if isinstance(exception, RateLimitExceeded):
            return rate_limited_response(exception)
        if isinstance(exception, BackendUnavailable):
            return backend_unavailable_response(exception)
        return None

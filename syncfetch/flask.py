"""Flask integration: one rate-limited :class:`~syncfetch.Session` per process, per app.

Usage::

    from flask import Flask
    import syncfetch.flask

    app = Flask(__name__)
    app.config["SYNCFETCH"] = {"limits": "10/second", "max_wait": 2.0}
    syncfetch.flask.init_app(app)

    @app.get("/users/<int:uid>")
    def user(uid):
        return syncfetch.flask.get_session().get(f"{API}/users/{uid}").json()

Every request thread of the process shares the one session, so they share its
limits. A view whose upstream call gives up waiting (``max_wait``) raises
:class:`~syncfetch.RateLimitExceeded`, and one whose shared backend is down raises
:class:`~syncfetch.BackendUnavailable`; both become a 503 with ``Retry-After``.

This module is never imported by ``syncfetch`` itself: Flask stays optional.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, current_app, jsonify

from ._exceptions import BackendUnavailable, RateLimitExceeded
from ._session import Session
from ._settings import (
    backend_error_body,
    backend_outages,
    close_at_exit,
    error_body,
    log,
    retry_after_seconds,
    session_from_settings,
)

__all__ = [
    "CONFIG_KEY",
    "EXTENSION_KEY",
    "backend_unavailable_response",
    "get_session",
    "init_app",
    "rate_limited_response",
]

#: ``app.config`` key holding the :class:`~syncfetch.Session` keyword arguments.
CONFIG_KEY = "SYNCFETCH"
#: ``app.extensions`` key under which the session is stored.
EXTENSION_KEY = "syncfetch"


def init_app(app: Flask, **overrides: Any) -> Session:
    """Build the app's session from ``app.config["SYNCFETCH"]`` and install the 503 handlers.

    Call it once per app, at import or in the app factory. Under gunicorn
    ``--preload`` the session is built in the master and inherited by each forked
    worker, where syncfetch resets its locks and connection pools, so every worker
    process ends up with its own session and its own limiter.

    The session is closed when the process exits, not per request or per app
    context: its connection pools and limiter are what the requests share.

    :param app: the Flask application.
    :param overrides: :class:`~syncfetch.Session` keyword arguments that win over the config.
    :returns: the session, also stored in ``app.extensions["syncfetch"]``.
    :raises ValueError: for unknown config keys (all named) or invalid values.
    :raises TypeError: for a config value of the wrong type, naming it.
    :raises RuntimeError: when the app already has a session.
    """
    if EXTENSION_KEY in app.extensions:
        # A second session would split the limit in two without anyone noticing.
        raise RuntimeError(f"syncfetch.flask.init_app() was already called for {app.name!r}")
    session = session_from_settings(
        app.config.get(CONFIG_KEY), source=f'app.config["{CONFIG_KEY}"]', **overrides
    )
    app.extensions[EXTENSION_KEY] = session
    app.register_error_handler(RateLimitExceeded, rate_limited_response)
    app.register_error_handler(BackendUnavailable, backend_unavailable_response)
    close_at_exit(session)
    return session


def get_session(app: Flask | None = None) -> Session:
    """The session :func:`init_app` built for ``app`` (default: the current app).

    :param app: the application; ``None`` uses :data:`flask.current_app`, so this
        needs an app context (any request has one).
    :returns: the process's session for that app.
    :raises RuntimeError: when :func:`init_app` was not called for the app, or when
        there is no app context.
    """
    # current_app is a proxy; reading attributes through it is all that is needed here.
    target = app if app is not None else current_app
    session = target.extensions.get(EXTENSION_KEY)
    if not isinstance(session, Session):
        raise RuntimeError(
            f"no syncfetch session for app {target.name!r}: call syncfetch.flask.init_app(app)"
        )
    return session


def rate_limited_response(exc: RateLimitExceeded) -> Response:
    """The error handler :func:`init_app` registers: 503, ``Retry-After`` and a JSON body.

    503 rather than 429: the client did nothing wrong, the upstream this app
    depends on is saturated. ``Retry-After`` is the limiter's estimate in whole
    seconds (1 when the wait was for a concurrency slot).

    :param exc: the exception raised by the view.
    :returns: the response.
    """
    seconds = retry_after_seconds(exc)
    log.info("syncfetch: answering 503, Retry-After %d: %s", seconds, exc)
    response = jsonify(error_body(seconds))
    response.status_code = 503
    response.headers["Retry-After"] = str(seconds)
    return response


def backend_unavailable_response(exc: BackendUnavailable) -> Response:
    """The handler :func:`init_app` registers for a shared backend that is down: 503.

    ``Retry-After`` grows with the outage (1 s at first, up to 30 s); the first
    failure of an outage is logged as a WARNING, the others at DEBUG.

    :param exc: the exception raised by the view.
    :returns: the response.
    """
    seconds = backend_outages.record(exc)
    response = jsonify(backend_error_body(seconds))
    response.status_code = 503
    response.headers["Retry-After"] = str(seconds)
    return response

"""Framework settings -> :class:`Session`: shared by the Flask and Django integrations.

Only the standard library and syncfetch itself are imported here, so neither web
framework is needed to use (or test) this module.
"""

from __future__ import annotations

import atexit
import difflib
import inspect
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from ._exceptions import BackendUnavailable, RateLimitExceeded
from ._retry import RetryPolicy
from ._session import RENAMED, Session, check_arguments

log = logging.getLogger("syncfetch")


def session_parameters() -> frozenset[str]:
    """The keyword arguments :class:`Session` accepts.

    Read from its signature rather than listed here, so an argument added to
    ``Session`` later (such as ``arrival_margin=``) is accepted in settings at once.
    """
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(
        name for name, param in inspect.signature(Session).parameters.items() if param.kind in kinds
    )


def session_kwargs(config: Mapping[str, Any] | None, *, source: str = "settings") -> dict[str, Any]:
    """Check a settings mapping and turn it into :class:`Session` keyword arguments.

    Besides what ``Session`` takes, two spellings common in settings files loaded
    from JSON, TOML or the environment are accepted: ``retry`` as a mapping of
    :class:`RetryPolicy` fields, and ``timeout`` as a two-item list.

    :param config: the mapping (``None`` means every default).
    :param source: where the mapping came from, for error messages.
    :returns: a new dict of keyword arguments.
    :raises ValueError: for unknown keys (all of them named) or an invalid ``retry`` mapping.
    :raises TypeError: when ``config`` is not a mapping.
    """
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise TypeError(f"{source} must be a mapping of Session arguments, not {config!r}")
    allowed = session_parameters()
    unknown = sorted(str(key) for key in config if key not in allowed)
    if unknown:
        hints = [
            f"{key!r} (now called {RENAMED[key]!r})"
            if key in RENAMED
            else f"{key!r} (did you mean {match[0]!r}?)"
            if match
            else repr(key)
            for key in unknown
            for match in [difflib.get_close_matches(key, allowed, n=1)]
        ]
        raise ValueError(
            f"{source} has unknown key{'s' if len(unknown) > 1 else ''} {', '.join(hints)}; "
            f"syncfetch.Session accepts {', '.join(sorted(allowed))}"
        )
    kwargs = dict(config)
    retry = kwargs.get("retry")
    if isinstance(retry, Mapping):
        try:
            kwargs["retry"] = RetryPolicy(**retry)
        except TypeError as exc:
            raise ValueError(f"{source}['retry'] is not a valid RetryPolicy: {exc}") from None
    if isinstance(kwargs.get("timeout"), list):
        kwargs["timeout"] = tuple(kwargs["timeout"])
    return kwargs


def session_from_settings(
    config: Mapping[str, Any] | None, *, source: str = "settings", **overrides: Any
) -> Session:
    """Build a :class:`Session` from a settings mapping; ``overrides`` win over it.

    :param config: Session keyword arguments, e.g. ``{"limits": "10/second", "max_wait": 2}``.
    :param source: where the mapping came from, for error messages.
    :returns: a new session.
    :raises ValueError: for unknown keys or invalid values, naming them.
    :raises TypeError: for a value of the wrong type, naming it.
    """
    kwargs = session_kwargs(config, source=source)
    kwargs.update(session_kwargs(overrides, source="overrides"))
    return Session(**kwargs)


def close_at_exit(session: Session) -> None:
    """Close ``session`` when the interpreter exits (each process closes its own copy).

    A weak reference, so a session dropped earlier (an app built by a test) is not
    kept alive until exit just to be closed.
    """
    atexit.register(_close_quietly, weakref.ref(session))


def _close_quietly(ref: weakref.ref[Session]) -> None:
    session = ref()
    if session is None:
        return
    try:
        session.close()
    except Exception:  # pragma: no cover - nothing left to tell at exit
        log.debug("syncfetch: error closing a session at exit", exc_info=True)


def check_settings(config: Mapping[str, Any] | None, *, source: str = "settings") -> None:
    """Check a settings mapping as :func:`session_from_settings` would, building nothing.

    :raises ValueError: for unknown keys or invalid values, naming them.
    :raises TypeError: for a mapping that is not one, or a value of the wrong type.
    """
    check_arguments(session_kwargs(config, source=source))


#: Longest ``Retry-After`` sent to clients, in seconds (a day): an estimate beyond it
#: tells a client nothing more, and a 31-digit header breaks some.
MAX_RETRY_AFTER = 86_400


def retry_after_seconds(exc: RateLimitExceeded) -> int:
    """Whole seconds for a ``Retry-After`` header: the limiter's estimate rounded up,
    between 1 and :data:`MAX_RETRY_AFTER`.

    ``retry_after`` is ``None`` when the wait was for a concurrency slot, which frees
    as soon as another call ends, so one second is as good a guess as any.
    """
    return _clamp_seconds(exc.retry_after)


def _clamp_seconds(value: float | None) -> int:
    if value is None or not value > 1:  # None, NaN, and anything under a second
        return 1
    if value >= MAX_RETRY_AFTER:
        return MAX_RETRY_AFTER
    return math.ceil(value)


def error_body(seconds: int) -> dict[str, Any]:
    """The JSON body of a 503 caused by :class:`RateLimitExceeded`.

    The bucket key (the upstream's ``scheme://host:port``) is left out on purpose:
    it would tell clients which internal service is saturated.
    """
    return {
        "error": "upstream_rate_limited",
        "detail": "An upstream API is at its rate limit; try again later.",
        "retry_after": seconds,
    }


def backend_error_body(seconds: int) -> dict[str, Any]:
    """The JSON body of a 503 caused by :class:`BackendUnavailable` (no backend address)."""
    return {
        "error": "upstream_limiter_unavailable",
        "detail": "The rate limiter for an upstream API is unavailable; try again later.",
        "retry_after": seconds,
    }


class BackendOutages:
    """Backend failures answered by this process's 503 handlers: one WARNING per outage.

    An outage starts with a failure after ``quiet`` seconds without one. Its
    ``Retry-After`` grows with it: a tenth of the outage so far, from 1 s up to
    ``max_retry_after``, so clients come back at once after a blip and less often
    during a long outage.
    """

    def __init__(
        self,
        *,
        quiet: float = 10.0,
        max_retry_after: int = 30,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.quiet = quiet
        self.max_retry_after = max_retry_after
        self._clock = clock
        # _lock guards _start and _last.
        self._lock = threading.Lock()
        self._start = 0.0
        self._last: float | None = None

    def after_fork(self) -> None:
        self._lock = threading.Lock()

    def record(self, exc: BackendUnavailable) -> int:
        """Note a failure answered now, log it if it starts an outage; returns Retry-After."""
        with self._lock:
            now = self._clock()
            new = self._last is None or now - self._last > self.quiet
            if new:
                self._start = now
            self._last = now
            age = now - self._start
        if new:
            log.warning(
                "syncfetch: the shared rate-limit backend is unavailable; answering 503 with "
                "Retry-After until it is back (logged once per outage): %s",
                exc,
            )
        else:
            log.debug("syncfetch: answering 503, backend still unavailable: %s", exc)
        return min(self.max_retry_after, _clamp_seconds(age / 10))


#: The process's outages, shared by the Flask and Django handlers.
backend_outages = BackendOutages()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=backend_outages.after_fork)

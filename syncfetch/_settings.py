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
import weakref
from collections.abc import Mapping
from typing import Any

from ._exceptions import RateLimitExceeded
from ._retry import RetryPolicy
from ._session import Session

log = logging.getLogger("syncfetch")


def session_parameters() -> frozenset[str]:
    """The keyword arguments :class:`Session` accepts.

    Read from its signature rather than listed here, so an argument added to
    ``Session`` later (such as ``backend=``) is accepted in settings at once.
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
            f"{key!r} (did you mean {match[0]!r}?)" if match else repr(key)
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


def retry_after_seconds(exc: RateLimitExceeded) -> int:
    """Whole seconds for a ``Retry-After`` header: the limiter's estimate rounded up.

    ``retry_after`` is ``None`` when the wait was for a concurrency slot, which frees
    as soon as another call ends, so one second is as good a guess as any.
    """
    if exc.retry_after is None:
        return 1
    return max(1, math.ceil(exc.retry_after))


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

"""The retry policy: which failures are retried, and how long to wait between attempts."""

from __future__ import annotations

import dataclasses
import email.utils
import math
import re
import time
from collections.abc import Collection, Iterator
from typing import Any

import backoff
import requests
from requests import PreparedRequest
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
)

from ._budget import RetryBudget
from ._stores.base import MAX_PAUSE

#: RFC 9110 section 9.2.2: the methods a client may repeat without changing the outcome.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
IDEMPOTENCY_HEADER = "Idempotency-Key"


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How a call is retried. Immutable; share one instance between sessions freely.

    :param retries: retries after the first attempt (``0`` disables retrying).
    :param backoff_base: cap of the first backoff wait, in seconds; it doubles per retry.
    :param backoff_max: cap of any backoff wait, in seconds.
    :param jitter: use full jitter (a uniform wait between 0 and the cap), as AWS recommends.
    :param statuses: response statuses that are retried (any collection; kept as a frozenset).
    :param methods: methods retried on any retryable failure. Others (POST, PATCH) are
        retried only when the request carries an ``Idempotency-Key`` header, when
        ``retry_non_idempotent`` is set, or when the connection was never made.
    :param retry_non_idempotent: retry every method as if it were idempotent.
    :param deadline: total seconds for a call across all attempts and waits; ``None``
        leaves it unbounded (each attempt still has its timeout).
    :param respect_retry_after: wait as long as a ``Retry-After`` header asks.
    :param retry_after_max: longest wait a server may ask for (``Retry-After``, a spent
        quota); a longer one ends the call at once with that response, or raises
        :class:`RateLimitExceeded` before sending.
    :param budget: retry tokens per bucket key, shared by the session's threads: a retry
        spends one, a success refunds one (:class:`RetryBudget`); ``None`` for no budget.
    """

    retries: int = 3
    backoff_base: float = 0.5
    backoff_max: float = 20.0
    jitter: bool = True
    statuses: Collection[int] = RETRY_STATUSES
    methods: Collection[str] = IDEMPOTENT_METHODS
    retry_non_idempotent: bool = False
    deadline: float | None = None
    respect_retry_after: bool = True
    retry_after_max: float = 60.0
    budget: RetryBudget | None = RetryBudget()  # noqa: RUF009 - immutable value

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be a whole number >= 0, not {self.retries!r}")
        for name in ("backoff_base", "backoff_max", "retry_after_max"):
            _check_seconds(name, getattr(self, name), allow_zero=True)
        if self.deadline is not None:
            _check_seconds("deadline", self.deadline, allow_zero=False, none="None or ")
        budget = self.budget
        if budget is not None and not isinstance(budget, RetryBudget):
            # A RetryBudget checks its own fields.
            raise ValueError(f"budget must be a RetryBudget or None, not {budget!r}")
        object.__setattr__(self, "statuses", _statuses(self.statuses))
        object.__setattr__(self, "methods", _methods(self.methods))

    def __repr__(self) -> str:
        """The fields that differ from the defaults, sets sorted: ``RetryPolicy(retries=5)``."""
        shown = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value == field.default:
                continue
            if isinstance(value, frozenset):
                text = "{" + ", ".join(map(repr, sorted(value))) + "}" if value else "set()"
            else:
                text = repr(value)
            shown.append(f"{field.name}={text}")
        return f"RetryPolicy({', '.join(shown)})"

    @classmethod
    def coerce(cls, retry: RetryPolicy | int | None) -> RetryPolicy:
        """Build a policy from the ``retry`` argument of :class:`Session`.

        :param retry: a policy, a number of retries, or ``None`` for no retries.
        :returns: the policy to use.
        :raises ValueError: for anything else.
        """
        if isinstance(retry, RetryPolicy):
            return retry
        if retry is None:
            return cls(retries=0)
        if isinstance(retry, int) and not isinstance(retry, bool):
            return cls(retries=retry)
        raise ValueError(f"retry must be a RetryPolicy, an int or None, not {retry!r}")

    def may_retry(self, request: PreparedRequest) -> bool:
        """Whether the request may be sent twice once something may have reached the server."""
        method = (request.method or "GET").upper()
        return (
            method in self.methods
            or self.retry_non_idempotent
            or IDEMPOTENCY_HEADER in request.headers
        )

    def waits(self) -> Iterator[float]:
        """Backoff caps for retry 1, 2, ... (before jitter)."""
        gen = backoff.expo(base=2, factor=self.backoff_base, max_value=self.backoff_max)
        # backoff's generators yield None once to be primed by a first send().
        first = next(gen)
        if first is not None:
            yield min(first, self.backoff_max)
        for value in gen:
            yield min(value, self.backoff_max)

    def jittered(self, cap: float) -> float:
        """Apply the policy's jitter to a backoff cap."""
        return backoff.full_jitter(cap) if self.jitter else cap


def _check_seconds(name: str, value: object, *, allow_zero: bool, none: str = "") -> None:
    """Refuse anything but a finite number of seconds in ``[0 or >0, MAX_PAUSE]``."""
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and (value >= 0 if allow_zero else value > 0)
        and value <= MAX_PAUSE  # NaN and inf fail one of these
    )
    if not ok:
        low = ">= 0" if allow_zero else "> 0"
        raise ValueError(
            f"{name} must be {none}a number of seconds {low} and at most {MAX_PAUSE:.0e}, "
            f"not {value!r}"
        )


# RFC 9110 section 5.6.2: a method is a token.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _methods(methods: object) -> frozenset[str]:
    """``methods`` as a set of upper-case method names; ValueError naming a bad one."""
    if isinstance(methods, (str, bytes)):
        raise ValueError(
            f"methods must be a collection of method names, not the string {methods!r}: "
            f"pass {{{methods.upper()!r}}} for one method"
            if isinstance(methods, str)
            else f"methods must be a collection of method names, not {methods!r}"
        )
    try:
        names = list(methods)  # type: ignore[call-overload]
    except TypeError:
        raise ValueError(f"methods must be a collection of method names, not {methods!r}") from None
    for name in names:
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ValueError(f"methods must be HTTP method names such as 'GET', not {name!r}")
    return frozenset(name.upper() for name in names)


def _statuses(statuses: object) -> frozenset[int]:
    """``statuses`` as a set of ints 100-599; ValueError naming a bad one."""
    if isinstance(statuses, (str, bytes)):
        raise ValueError(f"statuses must be a collection of ints such as {{503}}, not {statuses!r}")
    try:
        codes = list(statuses)  # type: ignore[call-overload]
    except TypeError:
        raise ValueError(
            f"statuses must be a collection of ints such as {{503}}, not {statuses!r}"
        ) from None
    for code in codes:
        if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
            raise ValueError(f"statuses must be HTTP status codes (ints 100-599), not {code!r}")
    return frozenset(codes)


_DELAY_SECONDS = re.compile(r"[0-9]+")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (RFC 9110 10.2.3), or ``None`` if unusable.

    Never raises: only ASCII digits make a delay (``str.isdigit`` also accepts ``"²"``),
    a date out of range is unusable, and a longer wait than ``MAX_PAUSE`` is cut to it.

    :param value: the header value: delay-seconds or an HTTP-date.
    :param now: current wall-clock time, for the date form (defaults to ``time.time()``).
    """
    if not isinstance(value, str):
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        # float() of a long digit string is inf, never an error.
        return min(float(value), MAX_PAUSE)
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when is None or when.tzinfo is None:
            return None
        wait = when.timestamp() - (time.time() if now is None else now)
    except (TypeError, ValueError, IndexError, OverflowError):
        # 20-digit years, days or offsets overflow C integers in the date parser.
        return None
    return min(max(0.0, wait), MAX_PAUSE) if math.isfinite(wait) else None


def _reason(exc: BaseException) -> Any:
    """The urllib3 error behind a requests exception, if any."""
    inner = exc.args[0] if exc.args else None
    if isinstance(inner, MaxRetryError):
        return inner.reason
    return inner


def nothing_sent(exc: BaseException) -> bool:
    """True when the request never left: the connection was refused or timed out."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if not isinstance(exc, requests.exceptions.ConnectionError):
        return False
    reason = _reason(exc)
    return isinstance(reason, (NewConnectionError, ConnectTimeoutError)) and not isinstance(
        reason, NameResolutionError
    )


def retryable_exception(exc: BaseException) -> bool:
    """True for transient transport failures: resets, timeouts, bodies cut short."""
    if isinstance(exc, (requests.exceptions.SSLError, requests.exceptions.InvalidHeader)):
        return False
    if isinstance(exc, requests.exceptions.ConnectionError):
        return not isinstance(_reason(exc), NameResolutionError)
    return isinstance(
        exc, (requests.exceptions.ReadTimeout, requests.exceptions.ChunkedEncodingError)
    )


def replayable_body(request: PreparedRequest) -> bool:
    """False for a body that cannot be sent twice (a generator or an unseekable stream)."""
    body = request.body
    if body is None or isinstance(body, (bytes, str)):
        return True
    return isinstance(getattr(request, "_body_position", None), int)

"""The retry policy: which failures are retried, and how long to wait between attempts."""

from __future__ import annotations

import dataclasses
import email.utils
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
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")
        if self.deadline is not None and (
            not isinstance(self.deadline, (int, float)) or self.deadline <= 0
        ):
            raise ValueError(f"deadline must be None or seconds > 0, not {self.deadline!r}")
        statuses = frozenset(self.statuses)
        if any(not isinstance(s, int) or not 100 <= s <= 599 for s in statuses):
            raise ValueError(f"statuses must be HTTP status codes, not {sorted(statuses)!r}")
        object.__setattr__(self, "statuses", statuses)
        object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))

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


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (RFC 9110 10.2.3), or ``None`` if unusable.

    :param value: the header value: delay-seconds or an HTTP-date.
    :param now: current wall-clock time, for the date form (defaults to ``time.time()``).
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


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

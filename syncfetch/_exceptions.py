"""Exceptions raised by syncfetch, rooted in requests' hierarchy."""

from __future__ import annotations

from typing import Any

from requests.exceptions import RequestException, Timeout

from ._redact import safe_text


class _SafeRepr:
    """``repr()`` with the message's URLs redacted (no credentials, no query values)."""

    def _repr_fields(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({safe_text(str(self))!r}{self._repr_fields()})"


class RateLimitExceeded(_SafeRepr, RequestException):
    """No rate-limit token or concurrency slot was available within ``max_wait``.

    Raised before anything is sent, so the request is always safe to try again.

    :ivar retry_after: seconds until a token is expected to free up, or ``None``
        when the wait was for a concurrency slot (which frees when another call ends).
    :ivar key: the bucket key (``scheme://host:port``, or ``"*"`` for a session-wide bucket).
    """

    def __init__(
        self, message: str, *, key: str, retry_after: float | None = None, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.key = key
        self.retry_after = retry_after

    def _repr_fields(self) -> str:
        return f", key={self.key!r}, retry_after={self.retry_after!r}"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments are lost by BaseException's default pickling,
        # and results of map() may cross process boundaries.
        return (_rebuild, (str(self), self.key, self.retry_after))


def _rebuild(message: str, key: str, retry_after: float | None) -> RateLimitExceeded:
    return RateLimitExceeded(message, key=key, retry_after=retry_after)


class DeadlineExceeded(_SafeRepr, Timeout):
    """The call's total time budget (``RetryPolicy.deadline``) ran out.

    A subclass of :class:`requests.Timeout`, so code that already catches
    timeouts handles it unchanged.
    """


class BackendUnavailable(_SafeRepr, RequestException):
    """The shared rate-limit backend (SQLite, Redis) could not be reached.

    Raised before anything is sent, so the limit is never silently exceeded. Pass
    ``on_backend_error="fallback"`` to limit per process while the backend is down.
    """


class SessionClosed(_SafeRepr, RequestException):
    """The session was closed while this call waited (for a token, a slot, a backoff or a
    server-requested pause); nothing more was sent for it."""

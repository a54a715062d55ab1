"""What a response says about when to send next: Retry-After and rate-limit headers."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping

from ._dialects import describe, dialect_wait, retry_after_ms
from ._retry import parse_retry_after
from ._stores.base import MAX_PAUSE

#: Statuses whose ``Retry-After`` pauses the whole bucket key, not just the one request
#: (403 with ``Retry-After`` is GitHub's secondary limit, 418 Binance's IP ban).
COOLDOWN_STATUSES = frozenset({403, 418, 429, 503})

# A reset above this is an epoch time, below it a delay: 1e9 s is September 2001,
# while no provider asks for a delay of 30 years. Epoch milliseconds are above 1e12.
_EPOCH_SECONDS = 1e9
_EPOCH_MILLIS = 1e12

# draft-ietf-httpapi-ratelimit-headers (draft 7 on): RateLimit: "policy";r=0;t=30
_PARAM = re.compile(r';\s*([a-z]+)\s*=\s*("[^"]*"|[^;,\s]+)')

# A non-negative decimal in ASCII digits only: float() would also take "²", Arabic-Indic digits,
# "1_000", "nan" and "inf".
_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _number(value: str | None) -> float | None:
    """A finite number >= 0 written in ASCII digits, else ``None``; never raises."""
    if not isinstance(value, str):
        return None
    text = value.strip().strip('"')
    if not _DECIMAL.fullmatch(text):
        return None
    number = float(text)  # inf for a huge value, never an error
    return number if math.isfinite(number) else None


def reset_delay(value: str | None, now: float | None = None) -> float | None:
    """Seconds until a reset given as delta seconds, epoch seconds or epoch milliseconds.

    At most ``MAX_PAUSE``; ``None`` for a malformed value.
    """
    number = _number(value)
    if number is None:
        return None
    if number >= _EPOCH_SECONDS:
        now = time.time() if now is None else now
        epoch = number / 1000 if number >= _EPOCH_MILLIS else number
        number = max(0.0, epoch - now)
    return min(number, MAX_PAUSE)


def _structured_ratelimit(value: str) -> float | None:
    """Wait from ``RateLimit: "name";r=0;t=3`` (IETF draft): ``t`` when any ``r`` is 0."""
    longest: float | None = None
    for member in value.split(","):
        params = dict(_PARAM.findall(member))
        remaining, reset = _number(params.get("r")), _number(params.get("t"))
        if remaining == 0 and reset is not None:
            longest = reset if longest is None else max(longest, reset)
    return None if longest is None else min(longest, MAX_PAUSE)


_QUOTA_HEADERS = (
    "RateLimit",
    "RateLimit-Remaining",
    "X-RateLimit-Remaining",
    "X-Rate-Limit-Remaining",
)


def quota_wait(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to hold a bucket key when the response says its quota is spent, else ``None``.

    Understands the IETF ``RateLimit`` header (structured form, and the older
    ``RateLimit-Remaining``/``RateLimit-Reset`` pair) and the common
    ``X-RateLimit-Remaining`` with ``X-RateLimit-Reset`` (delta seconds, epoch
    seconds or epoch milliseconds, told apart by magnitude) or
    ``X-RateLimit-Reset-After``. Malformed values (anything but ASCII decimals) are
    ignored, never raised; a wait is finite, >= 0 and at most ``MAX_PAUSE``.
    """
    structured = headers.get("RateLimit")
    if structured and ";" in structured:
        wait = _structured_ratelimit(structured)
        if wait is not None:
            return wait
    for prefix in ("RateLimit-", "X-RateLimit-", "X-Rate-Limit-"):
        if _number(headers.get(prefix + "Remaining")) != 0:
            continue
        for name in ("Reset-After", "Reset"):
            wait = reset_delay(headers.get(prefix + name), now)
            if wait is not None:
                return wait
    return None


def server_wait(
    status: int, headers: Mapping[str, str], *, retry_after: bool, quota: bool
) -> tuple[float | None, str]:
    """The pause a response asks of its whole bucket key, and why (for logs).

    Never raises; a wait is finite, >= 0 and at most ``MAX_PAUSE`` (the caller caps it
    further, at ``RetryPolicy.retry_after_max``).

    :param retry_after: honour ``Retry-After`` on 429 and 503.
    :param quota: honour rate-limit headers that report a spent quota.
    """
    wait, why = None, ""
    if retry_after and status in COOLDOWN_STATUSES:
        wait, why = parse_retry_after(headers.get("Retry-After")), f"Retry-After on {status}"
        if wait is None:
            wait, why = retry_after_ms(headers), f"retry-after-ms on {status}"
    if wait is None and quota:
        wait, why = quota_wait(headers), f"quota spent ({status})"
        if wait is None:
            wait, why = dialect_wait(status, headers)
    if wait is None:
        return None, ""
    more = describe(headers)  # the provider's bucket or used weight, for the log line
    return wait, f"{why}; {more}" if more else why


def is_throttle(status: int, headers: Mapping[str, str]) -> bool:
    """429; a 403 or 418 with ``Retry-After`` (GitHub's secondary limit, Binance's ban); or a
    403 that reports a spent quota (GitHub's primary limit)."""
    if status == 429 or (status in (403, 418) and "Retry-After" in headers):
        return True
    return status == 403 and any(
        _number(headers.get(p + "Remaining")) == 0 for p in ("X-RateLimit-", "RateLimit-")
    )

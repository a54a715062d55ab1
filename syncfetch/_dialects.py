"""Providers' own rate-limit headers, beyond ``Retry-After`` and ``X-RateLimit-*``.

- OpenAI: ``x-ratelimit-remaining-requests``/``-tokens`` with ``x-ratelimit-reset-requests``/
  ``-tokens`` given as Go-style durations (``6m0s``, ``12ms``, ``1h2m3.5s``), and
  ``retry-after-ms`` on a 429.
- Discord: ``X-RateLimit-Reset-After`` (float seconds, read by ``_feedback``) per bucket, named
  by ``X-RateLimit-Bucket``.
- Salesforce: ``Sforce-Limit-Info: api-usage=25/15000`` (calls used / allowed in a rolling
  24 hours); a spent allowance has no reset time, so the key waits :data:`UNKNOWN_RESET`.
- Binance: ``X-MBX-USED-WEIGHT-1M`` (weight used in the current minute); a 418 with
  ``Retry-After`` is an IP ban, paused like a 429 (see ``_feedback``).

Every parser takes any ``str`` and never raises: a malformed value is ignored (``None``).
A wait is finite, >= 0 and at most ``MAX_PAUSE``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from ._stores.base import MAX_PAUSE

#: Seconds a key waits when a quota is spent and the provider gives no reset time. The
#: caller caps it at ``RetryPolicy.retry_after_max``; the next call after it probes again.
UNKNOWN_RESET = 60.0

_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
# ASCII digits only: "\d" would also match "²" and other scripts' digits.
_COMPONENT = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ms|us|µs|ns|h|m|s)")
_DURATION = re.compile(r"(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ms|us|µs|ns|h|m|s))+")
_DURATION_MAX_LEN = 64
_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_USAGE = re.compile(r"api-usage=([0-9]{1,18})/([0-9]{1,18})(?![0-9])")
_BUCKET = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_WEIGHT = re.compile(r"x-mbx-used-weight-([0-9]{1,6})([smhd])", re.IGNORECASE)


def _capped(seconds: float) -> float | None:
    return min(seconds, MAX_PAUSE) if math.isfinite(seconds) and seconds >= 0 else None


def _count(value: str | None) -> int | None:
    """A count in ASCII digits (at most 18 of them), else ``None``."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def parse_duration(value: str | None) -> float | None:
    """Seconds in a Go-style duration as OpenAI sends it: ``6m0s``, ``12ms``, ``1h2m3.5s``.

    Also a bare number of seconds (``"20"``, ``"0.5"``). ``None`` for anything else (a
    sign, spaces inside, an unknown unit, non-ASCII digits); at most ``MAX_PAUSE``.
    """
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or len(text) > _DURATION_MAX_LEN:
        return None
    if _SECONDS.fullmatch(text):
        return _capped(float(text))
    if not _DURATION.fullmatch(text):
        return None
    total = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _COMPONENT.findall(text))
    return _capped(total)


def openai_wait(headers: Mapping[str, str]) -> float | None:
    """Longest reset among OpenAI's spent quotas (requests or tokens per minute), else ``None``."""
    longest: float | None = None
    for kind in ("requests", "tokens"):
        if _count(headers.get(f"x-ratelimit-remaining-{kind}")) != 0:
            continue
        wait = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
        if wait is not None:
            longest = wait if longest is None else max(longest, wait)
    return longest


def retry_after_ms(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` (OpenAI, Azure), else ``None``."""
    value = headers.get("retry-after-ms")
    if not isinstance(value, str) or not _SECONDS.fullmatch(value.strip()):
        return None
    return _capped(float(value.strip()) / 1000)


def salesforce_usage(headers: Mapping[str, str]) -> tuple[int, int] | None:
    """``(used, allowed)`` from ``Sforce-Limit-Info: api-usage=25/15000``, else ``None``."""
    value = headers.get("Sforce-Limit-Info")
    if not isinstance(value, str):
        return None
    match = _USAGE.search(value)
    if match is None:
        return None
    used, allowed = int(match[1]), int(match[2])
    return (used, allowed) if allowed > 0 else None


def discord_bucket(headers: Mapping[str, str]) -> str | None:
    """The bucket ``X-RateLimit-Bucket`` names (an opaque id), else ``None``."""
    value = headers.get("X-RateLimit-Bucket")
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value if _BUCKET.fullmatch(value) else None


def binance_weights(headers: Mapping[str, str]) -> dict[str, int]:
    """Weight used per interval from ``X-MBX-USED-WEIGHT-1M`` and the like: ``{"1m": 1180}``."""
    weights: dict[str, int] = {}
    for name, value in headers.items():
        if not isinstance(name, str):
            continue
        match = _WEIGHT.fullmatch(name.strip())
        used = _count(value) if match else None
        if match and used is not None:
            weights[f"{int(match[1])}{match[2].lower()}"] = used
    return weights


def dialect_wait(status: int, headers: Mapping[str, str]) -> tuple[float | None, str]:
    """The pause a provider's own headers ask for, and why (for logs); never raises."""
    if status in (418, 429, 503):
        wait = retry_after_ms(headers)
        if wait is not None:
            return wait, f"retry-after-ms on {status}"
    wait = openai_wait(headers)
    if wait is not None:
        return wait, f"quota spent ({status}, x-ratelimit-reset-*)"
    usage = salesforce_usage(headers)
    if usage is not None and usage[0] >= usage[1]:
        return UNKNOWN_RESET, f"quota spent ({status}, Sforce-Limit-Info {usage[0]}/{usage[1]})"
    return None, ""


def describe(headers: Mapping[str, str]) -> str:
    """What the dialect headers say, for a log line: ``""`` when none is present."""
    parts = []
    bucket = discord_bucket(headers)
    if bucket is not None:
        parts.append(f"bucket {bucket}")
    weights = binance_weights(headers)
    if weights:
        parts.append("used weight " + ", ".join(f"{w}/{i}" for i, w in sorted(weights.items())))
    return "; ".join(parts)

"""Parsing of rate strings such as ``"10/second"`` and clean-up of rate lists."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable

from pyrate_limiter import Rate, validate_rate_list

log = logging.getLogger("syncfetch")

_UNIT_MS = {
    "ms": 1,
    "millisecond": 1,
    "milliseconds": 1,
    "s": 1000,
    "sec": 1000,
    "secs": 1000,
    "second": 1000,
    "seconds": 1000,
    "min": 60_000,
    "mins": 60_000,
    "minute": 60_000,
    "minutes": 60_000,
    "h": 3_600_000,
    "hr": 3_600_000,
    "hour": 3_600_000,
    "hours": 3_600_000,
    "d": 86_400_000,
    "day": 86_400_000,
    "days": 86_400_000,
}

# ASCII only: \d would also take Arabic-Indic and other Unicode digits.
_RATE_RE = re.compile(
    r"^\s*(\d+)\s*(?:/|per)\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$", re.IGNORECASE | re.ASCII
)

#: Largest count of a rate. Far above any real limit; keeps counts exact in Redis' Lua
#: (doubles) and in SQLite's int64.
MAX_LIMIT = 10**9
#: Longest window of a rate, in milliseconds (about 31.7 years): timestamps plus the
#: window stay within int64 milliseconds (SQLite) and exact in Lua doubles (Redis).
MAX_INTERVAL_MS = 10**12

ACCEPTED = (
    '"N/second" (or N/s, N/sec), "N/minute" (N/min), "N/hour" (N/h), "N/day" (N/d), '
    'with an optional multiple such as "100/10s" or "1000/15min"'
)

LimitsArg = str | Rate | Iterable[str | Rate] | None


def parse_rate(text: str) -> Rate:
    """Parse one rate string such as ``"10/second"`` or ``"100/10s"``.

    The count must be 1 to :data:`MAX_LIMIT` (10**9) and the interval 1 ms to
    :data:`MAX_INTERVAL_MS` (10**12 ms, about 31.7 years): every backend can store
    such a rate.

    :param text: the rate, as a count, a slash and a unit with an optional multiple.
    :returns: the equivalent :class:`pyrate_limiter.Rate` (interval in milliseconds).
    :raises ValueError: naming the string and the accepted forms or bounds.
    """
    if not isinstance(text, str):
        raise TypeError(f"a rate must be a string or pyrate_limiter.Rate, not {text!r}")
    match = _RATE_RE.match(text)
    unit_ms = _UNIT_MS.get(match.group(3).lower()) if match else None
    if match is None or unit_ms is None:
        raise ValueError(f"invalid rate {text[:100]!r}: expected {ACCEPTED}")
    digits = match.group(1).lstrip("0") or "0"
    # Checked on the digits: int() refuses strings over 4300 digits with its own error.
    count = int(digits) if len(digits) <= 10 else MAX_LIMIT + 1
    multiple = float(match.group(2)) if match.group(2) else 1.0
    return _checked(count, multiple * unit_ms, repr(text[:100]))


def _checked(limit: object, interval: object, shown: str) -> Rate:
    """A :class:`Rate` of ``limit`` per ``interval`` ms, within the bounds, else ValueError."""
    if isinstance(limit, bool) or not isinstance(limit, int):
        if not (isinstance(limit, float) and limit.is_integer()):
            raise ValueError(f"invalid rate {shown}: the count must be a whole number")
        limit = int(limit)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)):
        raise ValueError(f"invalid rate {shown}: the interval must be a number of milliseconds")
    if limit <= 0 or not interval >= 0.5:  # NaN too; rounds to 0 ms below 0.5
        raise ValueError(f"invalid rate {shown}: the count and the interval must be positive")
    if limit > MAX_LIMIT:
        raise ValueError(f"invalid rate {shown}: the count must be at most {MAX_LIMIT:,}")
    if interval > MAX_INTERVAL_MS:
        raise ValueError(
            f"invalid rate {shown}: the interval must be at most {MAX_INTERVAL_MS:,} ms "
            "(about 31 years)"
        )
    return Rate(limit, round(interval))


def normalize_limits(limits: LimitsArg) -> list[Rate]:
    """Turn the ``limits`` argument into a list pyrate-limiter accepts.

    Provider docs often list a rate that another already implies ("10/second and
    1000/minute": 10/s never lets 1000 through in a minute). Such rates can never
    bind, so they are dropped (with a debug log) instead of rejected.

    :param limits: ``None``, one rate, or an iterable of rates (strings or ``Rate``).
    :returns: the binding rates, shortest interval first; empty for "no limit".
    :raises ValueError: for an invalid rate (bounds as in :func:`parse_rate`), or a set
        of rates that cannot be ordered.
    """
    if limits is None:
        return []
    items: list[str | Rate] = [limits] if isinstance(limits, (str, Rate)) else list(limits)
    rates: list[Rate] = []
    for item in items:
        if isinstance(item, Rate):
            rates.append(_checked(item.limit, item.interval, f"{item.limit}/{item.interval}ms"))
        else:
            rates.append(parse_rate(item))
    kept: list[Rate] = []
    for rate in sorted(rates, key=lambda r: (r.interval, r.limit)):
        if any(_implies(k, rate) for k in kept):
            log.debug("syncfetch: dropping rate %s: a shorter rate never lets it bind", rate)
            continue
        for shorter in [k for k in kept if rate.limit <= k.limit]:
            log.debug(
                "syncfetch: dropping rate %s: the longer rate %s is always tighter", shorter, rate
            )
            kept.remove(shorter)
        kept.append(rate)
    if kept and not validate_rate_list(kept):
        raise ValueError(
            f"rates {[str(r) for r in kept]} cannot be enforced together: a longer interval "
            "must allow more requests but at a lower average rate than a shorter one"
        )
    return kept


def _implies(shorter: Rate, longer: Rate) -> bool:
    """True when ``shorter`` alone keeps every ``longer`` window within its limit."""
    if longer.interval == shorter.interval:
        return longer.limit >= shorter.limit
    windows = math.ceil(longer.interval / shorter.interval)
    return longer.limit >= shorter.limit * windows

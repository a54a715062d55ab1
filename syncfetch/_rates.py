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

_RATE_RE = re.compile(r"^\s*(\d+)\s*(?:/|per)\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$", re.IGNORECASE)

ACCEPTED = (
    '"N/second" (or N/s, N/sec), "N/minute" (N/min), "N/hour" (N/h), "N/day" (N/d), '
    'with an optional multiple such as "100/10s" or "1000/15min"'
)

LimitsArg = str | Rate | Iterable[str | Rate] | None


def parse_rate(text: str) -> Rate:
    """Parse one rate string such as ``"10/second"`` or ``"100/10s"``.

    :param text: the rate, as a count, a slash and a unit with an optional multiple.
    :returns: the equivalent :class:`pyrate_limiter.Rate` (interval in milliseconds).
    :raises ValueError: naming the string and the accepted forms.
    """
    if not isinstance(text, str):
        raise TypeError(f"a rate must be a string or pyrate_limiter.Rate, not {text!r}")
    match = _RATE_RE.match(text)
    unit_ms = _UNIT_MS.get(match.group(3).lower()) if match else None
    if match is None or unit_ms is None:
        raise ValueError(f"invalid rate {text!r}: expected {ACCEPTED}")
    count = int(match.group(1))
    multiple = float(match.group(2)) if match.group(2) else 1.0
    interval = round(multiple * unit_ms)
    if count <= 0 or interval <= 0:
        raise ValueError(f"invalid rate {text!r}: the count and the interval must be positive")
    return Rate(count, interval)


def normalize_limits(limits: LimitsArg) -> list[Rate]:
    """Turn the ``limits`` argument into a list pyrate-limiter accepts.

    Provider docs often list a rate that another already implies ("10/second and
    1000/minute": 10/s never lets 1000 through in a minute). Such rates can never
    bind, so they are dropped (with a debug log) instead of rejected.

    :param limits: ``None``, one rate, or an iterable of rates (strings or ``Rate``).
    :returns: the binding rates, shortest interval first; empty for "no limit".
    :raises ValueError: for an invalid rate, or a set of rates that cannot be ordered.
    """
    if limits is None:
        return []
    items: list[str | Rate] = [limits] if isinstance(limits, (str, Rate)) else list(limits)
    rates: list[Rate] = []
    for item in items:
        if isinstance(item, Rate):
            if item.limit <= 0 or item.interval <= 0:
                raise ValueError(
                    f"invalid rate {item!r}: the count and the interval must be positive"
                )
            rates.append(Rate(item.limit, item.interval))
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

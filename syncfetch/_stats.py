"""Counters shared by every thread of a session, and their immutable snapshot."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from types import MappingProxyType
from typing import Any


@dataclasses.dataclass(frozen=True)
class Stats:
    """A snapshot of a session's counters (``session.stats``).

    :ivar requests: requests handed to the pipeline (each redirect hop counts once).
    :ivar attempts: attempts put on the wire, retries included.
    :ivar retries: attempts that were retries.
    :ivar giveups: requests that ended on a retryable failure with no retry left.
    :ivar responses_429: 429 responses received.
    :ivar rate_limited: calls refused with :class:`RateLimitExceeded`.
    :ivar token_wait: seconds spent waiting for rate-limit tokens, summed over threads.
    :ivar slot_wait: seconds spent waiting for a concurrency slot, summed over threads.
    :ivar backoff_wait: seconds of backoff and ``Retry-After`` waits, summed over threads.
    :ivar cooldowns: times a response paused its whole bucket key (``Retry-After`` on
        429/503, or rate-limit headers reporting a spent quota).
    :ivar cooldown_wait: seconds calls waited for such pauses, summed over threads.
    :ivar budget_exhausted: retries refused because the retry budget was spent.
    :ivar errors: failed attempts by exception type name.
    :ivar statuses: responses received by status code, retried ones included.
    """

    requests: int = 0
    attempts: int = 0
    retries: int = 0
    giveups: int = 0
    responses_429: int = 0
    rate_limited: int = 0
    token_wait: float = 0.0
    slot_wait: float = 0.0
    backoff_wait: float = 0.0
    cooldowns: int = 0
    cooldown_wait: float = 0.0
    budget_exhausted: int = 0
    errors: MappingProxyType[str, int] = dataclasses.field(
        default_factory=lambda: MappingProxyType({})
    )
    statuses: MappingProxyType[int, int] = dataclasses.field(
        default_factory=lambda: MappingProxyType({})
    )


_NUMBERS = tuple(f.name for f in dataclasses.fields(Stats) if f.name not in ("errors", "statuses"))


class StatsRecorder:
    """Mutable counters behind :class:`Stats`."""

    def __init__(self) -> None:
        # _lock guards every counter below; each update is a few additions.
        self._lock = threading.Lock()
        self._numbers: dict[str, float] = dict.fromkeys(_NUMBERS, 0)
        self._errors: Counter[str] = Counter()
        self._statuses: Counter[int] = Counter()

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def after_fork(self) -> None:
        """Reset in a forked child: the child's counters start from zero."""
        self.__init__()  # type: ignore[misc]

    def add(self, **amounts: float) -> None:
        with self._lock:
            for name, amount in amounts.items():
                self._numbers[name] += amount

    def error(self, exc: BaseException) -> None:
        with self._lock:
            self._errors[type(exc).__name__] += 1

    def status(self, code: int) -> None:
        with self._lock:
            self._statuses[code] += 1
            if code == 429:
                self._numbers["responses_429"] += 1

    def snapshot(self) -> Stats:
        with self._lock:
            numbers = dict(self._numbers)
            errors = MappingProxyType(dict(self._errors))
            statuses = MappingProxyType(dict(self._statuses))
        fields: dict[str, Any] = {
            k: float(v) if k.endswith("_wait") else int(v) for k, v in numbers.items()
        }
        return Stats(**fields, errors=errors, statuses=statuses)

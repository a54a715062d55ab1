"""Counters shared by every thread of a session, and their immutable snapshot."""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections import Counter
from collections.abc import Callable
from types import MappingProxyType
from typing import Any


@dataclasses.dataclass(frozen=True)
class KeyStats:
    """The counters of one bucket key (an entry of :attr:`Stats.by_key`), and of a session.

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
    :ivar paused_for: seconds left of the key's current pause (0 when none; in
        :class:`Stats` itself, always 0).
    :ivar rate: the key's current rate in requests/second when ``adaptive`` is on
        (``None`` otherwise, and in :class:`Stats` itself).
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
    paused_for: float = 0.0
    rate: float | None = None


@dataclasses.dataclass(frozen=True)
class Stats(KeyStats):
    """A snapshot of a session's counters (``session.stats``): the totals, and per key.

    :ivar by_key: the same counters for each bucket key (``scheme://host:port``, or
        ``"*"`` with ``per_host=False``), with the key's pause and adaptive rate. A
        session that has talked to more than :data:`MAX_KEYS` keys counts the others
        under ``"(other)"``.
    """

    by_key: MappingProxyType[str, KeyStats] = dataclasses.field(
        default_factory=lambda: MappingProxyType({})
    )


#: Keys counted apart per thread; past this many, ``"(other)"`` (bounded memory in a
#: crawl over a million hosts).
MAX_KEYS = 1000
OTHER_KEY = "(other)"

_NUMBERS = tuple(
    f.name
    for f in dataclasses.fields(KeyStats)
    if f.name not in ("errors", "statuses", "paused_for", "rate")
)


class _Counts:
    """One key's counters in one thread's shard."""

    __slots__ = ("errors", "numbers", "statuses")

    def __init__(self) -> None:
        self.numbers: dict[str, float] = dict.fromkeys(_NUMBERS, 0)
        self.errors: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()

    def fold_into(self, total: _Counts) -> None:
        # dict() copies are single C calls: atomic under the GIL even while the
        # owning thread keeps counting.
        for name, value in dict(self.numbers).items():
            total.numbers[name] += value
        total.errors.update(dict(self.errors))
        total.statuses.update(dict(self.statuses))


class _Shard(dict[str, _Counts]):
    """One thread's counters by key: written only by that thread, so no lock on the hot path."""

    def counts(self, key: str) -> _Counts:
        counts = self.get(key)
        if counts is None:
            if len(self) >= MAX_KEYS:
                key = OTHER_KEY
                counts = self.get(key)
            if counts is None:
                counts = self[key] = _Counts()
        return counts

    def fold_into(self, total: _Shard) -> None:
        for key, counts in list(self.items()):
            counts.fold_into(total.setdefault(key, _Counts()))


class StatsRecorder:
    """Mutable counters behind :class:`Stats`, sharded per thread, then per key.

    A single lock taken three times per call showed up as contention with 16
    threads; each thread now counts in its own shard and a snapshot adds them up.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        # _lock guards _shards and _retired (registration, folding, snapshots).
        self._lock = threading.Lock()
        self._shards: list[tuple[weakref.ref[threading.Thread], _Shard]] = []
        self._retired = _Shard()

    def after_fork(self) -> None:
        """Reset in a forked child: the child's counters start from zero."""
        self.__init__()  # type: ignore[misc]

    def _shard(self) -> _Shard:
        shard: _Shard | None = getattr(self._local, "shard", None)
        if shard is None:
            shard = self._local.shard = _Shard()
            with self._lock:
                if len(self._shards) >= 64:
                    # Threads that have ended never count again: fold them away so a
                    # process that starts a thread per task keeps a bounded list.
                    alive = []
                    for ref, other in self._shards:
                        thread = ref()
                        if thread is None or not thread.is_alive():
                            other.fold_into(self._retired)
                        else:
                            alive.append((ref, other))
                    self._shards = alive
                self._shards.append((weakref.ref(threading.current_thread()), shard))
        return shard

    def add(self, key: str, /, **amounts: float) -> None:
        numbers = self._shard().counts(key).numbers
        for name, amount in amounts.items():
            numbers[name] += amount

    def error(self, key: str, exc: BaseException, /, **amounts: float) -> None:
        """Count a failed attempt, with other amounts."""
        counts = self._shard().counts(key)
        counts.errors[type(exc).__name__] += 1
        numbers = counts.numbers
        for name, amount in amounts.items():
            numbers[name] += amount

    def status(self, key: str, code: int, /, **amounts: float) -> None:
        """Count a response, with other amounts."""
        counts = self._shard().counts(key)
        counts.statuses[code] += 1
        numbers = counts.numbers
        if code == 429:
            numbers["responses_429"] += 1
        for name, amount in amounts.items():
            numbers[name] += amount

    def snapshot(
        self,
        paused_for: Callable[[str], float] | None = None,
        rate: Callable[[str], float | None] | None = None,
    ) -> Stats:
        """The totals and the per-key counters.

        :param paused_for: seconds left of a key's pause (the limiter's).
        :param rate: a key's adaptive rate, when adaptive is on.
        """
        by_key = _Shard()
        with self._lock:
            self._retired.fold_into(by_key)
            for _, shard in self._shards:
                shard.fold_into(by_key)
        total = _Counts()
        keys: dict[str, KeyStats] = {}
        for key, counts in sorted(by_key.items()):
            counts.fold_into(total)
            keys[key] = KeyStats(
                **_fields(counts),
                paused_for=paused_for(key) if paused_for is not None and key != OTHER_KEY else 0.0,
                rate=rate(key) if rate is not None and key != OTHER_KEY else None,
            )
        return Stats(**_fields(total), by_key=MappingProxyType(keys))


def _fields(counts: _Counts) -> dict[str, Any]:
    fields: dict[str, Any] = {
        k: float(v) if k.endswith("_wait") else int(v) for k, v in counts.numbers.items()
    }
    fields["errors"] = MappingProxyType(dict(counts.errors))
    fields["statuses"] = MappingProxyType(dict(counts.statuses))
    return fields

"""Counters shared by every thread of a session, and their immutable snapshot."""

from __future__ import annotations

import dataclasses
import threading
import weakref
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


class _Shard:
    """One thread's counters: written only by that thread, so no lock on the hot path."""

    __slots__ = ("errors", "numbers", "statuses")

    def __init__(self) -> None:
        self.numbers: dict[str, float] = dict.fromkeys(_NUMBERS, 0)
        self.errors: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()

    def fold_into(self, total: _Shard) -> None:
        # dict() copies are single C calls: atomic under the GIL even while the
        # owning thread keeps counting.
        for name, value in dict(self.numbers).items():
            total.numbers[name] += value
        total.errors.update(dict(self.errors))
        total.statuses.update(dict(self.statuses))


class StatsRecorder:
    """Mutable counters behind :class:`Stats`, sharded per thread.

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

    def add(self, **amounts: float) -> None:
        numbers = self._shard().numbers
        for name, amount in amounts.items():
            numbers[name] += amount

    def error(self, exc: BaseException, **amounts: float) -> None:
        """Count a failed attempt, with other amounts."""
        shard = self._shard()
        shard.errors[type(exc).__name__] += 1
        for name, amount in amounts.items():
            shard.numbers[name] += amount

    def status(self, code: int, **amounts: float) -> None:
        """Count a response, with other amounts."""
        shard = self._shard()
        shard.statuses[code] += 1
        numbers = shard.numbers
        if code == 429:
            numbers["responses_429"] += 1
        for name, amount in amounts.items():
            numbers[name] += amount

    def snapshot(self) -> Stats:
        total = _Shard()
        with self._lock:
            self._retired.fold_into(total)
            for _, shard in self._shards:
                shard.fold_into(total)
        fields: dict[str, Any] = {
            k: float(v) if k.endswith("_wait") else int(v) for k, v in total.numbers.items()
        }
        return Stats(
            **fields,
            errors=MappingProxyType(dict(total.errors)),
            statuses=MappingProxyType(dict(total.statuses)),
        )

"""Retry budget: retries allowed only while they stay a fraction of recent requests.

When a provider is down, every client retrying every call multiplies its load by
the number of attempts. Like Finagle's and Envoy's retry budgets, a session lets
retries through only while, over the last ``ttl`` seconds, they stay under
``ratio`` of first attempts plus a reserve of ``min_per_second``.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class RetryBudget:
    """Limits retries to a share of recent traffic, per bucket key.

    :param ratio: retries allowed per first attempt (0.2: one retry for five calls,
        as Finagle and Envoy default to).
    :param min_per_second: retries always allowed per second, so a quiet client can
        still retry its occasional failure.
    :param ttl: seconds of history the budget looks at.
    """

    ratio: float = 0.2
    min_per_second: float = 10.0
    ttl: float = 10.0

    def __post_init__(self) -> None:
        for name in ("ratio", "min_per_second"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"RetryBudget.{name} must be a number >= 0, not {value!r}")
        if not isinstance(self.ttl, (int, float)) or self.ttl <= 0:
            raise ValueError(f"RetryBudget.ttl must be seconds > 0, not {self.ttl!r}")


class BudgetTracker:
    """Counts of first attempts and retries per key, in one-second slots over ``ttl``.

    Every call counts a first attempt, so that path takes no lock: each thread counts
    in its own shard, and only a retry (rare) adds the shards up under a lock.
    """

    def __init__(self, budget: RetryBudget, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget
        self._clock = clock
        self._local = threading.local()
        # _lock guards _shards (registration, pruning) and makes each spend atomic.
        self._lock = threading.Lock()
        self._shards: list[tuple[weakref.ref[threading.Thread], dict[str, deque[list[int]]]]] = []
        # Counts of threads that have ended, per key and second: a server that starts a
        # thread per request must not get a fresh budget with each thread.
        self._retired: dict[str, dict[int, list[int]]] = {}

    def after_fork(self) -> None:
        self.__init__(self.budget, self._clock)  # type: ignore[misc]

    def _shard(self) -> dict[str, deque[list[int]]]:
        shard: dict[str, deque[list[int]]] | None = getattr(self._local, "shard", None)
        if shard is None:
            shard = self._local.shard = {}
            with self._lock:
                alive = []
                for ref, other in self._shards:
                    if _alive(ref):
                        alive.append((ref, other))
                    else:
                        self._retire(other)
                self._shards = alive
                self._shards.append((weakref.ref(threading.current_thread()), shard))
        return shard

    def _retire(self, shard: dict[str, deque[list[int]]]) -> None:
        """Fold an ended thread's counts into ``_retired`` (under ``_lock``)."""
        horizon = int(self._clock()) - self.budget.ttl
        for key, slots in shard.items():
            seconds = self._retired.setdefault(key, {})
            for second, reqs, rets in slots:
                if second > horizon:
                    total = seconds.setdefault(second, [0, 0])
                    total[0] += reqs
                    total[1] += rets
        for key in list(self._retired):
            seconds = self._retired[key]
            for second in [s for s in seconds if s <= horizon]:
                del seconds[second]
            if not seconds:
                del self._retired[key]

    def _slot(self, key: str) -> list[int]:
        now = int(self._clock())
        shard = self._shard()
        slots = shard.get(key)
        if slots is None:
            if len(shard) > 1000:
                # Keys idle for a whole ttl carry no budget information.
                for k in [
                    k for k, s in shard.items() if not s or s[-1][0] <= now - self.budget.ttl
                ]:
                    del shard[k]
            slots = shard[key] = deque()
        while slots and slots[0][0] <= now - self.budget.ttl:
            slots.popleft()
        if not slots or slots[-1][0] != now:
            slots.append([now, 0, 0])
        return slots[-1]

    def record_request(self, key: str) -> None:
        """Count a first attempt for ``key``."""
        self._slot(key)[1] += 1

    def try_spend(self, key: str) -> bool:
        """Take one retry from ``key``'s budget; ``False`` when it is spent."""
        budget = self.budget
        horizon = int(self._clock()) - budget.ttl
        current = self._slot(key)
        with self._lock:
            requests = retries = 0
            for second, (reqs, rets) in self._retired.get(key, {}).items():
                if second > horizon:
                    requests += reqs
                    retries += rets
            for _, shard in self._shards:
                # list() copies in one C call: atomic under the GIL while the owner
                # thread keeps appending.
                for second, reqs, rets in list(shard.get(key, ())):
                    if second > horizon:
                        requests += reqs
                        retries += rets
            if retries + 1 > budget.ratio * requests + budget.min_per_second * budget.ttl:
                return False
            current[2] += 1
            return True


def _alive(ref: weakref.ref[threading.Thread]) -> bool:
    thread = ref()
    return thread is not None and thread.is_alive()

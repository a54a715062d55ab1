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
    """Counts of first attempts and retries per key, in one-second slots over ``ttl``."""

    def __init__(self, budget: RetryBudget, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget
        self._clock = clock
        # _lock guards _slots: per key, a deque of [second, requests, retries].
        self._lock = threading.Lock()
        self._slots: dict[str, deque[list[int]]] = {}

    def after_fork(self) -> None:
        self._lock = threading.Lock()

    def _current(self, key: str) -> list[int]:
        now = int(self._clock())
        slots = self._slots.setdefault(key, deque())
        horizon = now - self.budget.ttl
        while slots and slots[0][0] <= horizon:
            slots.popleft()
        if not slots or slots[-1][0] != now:
            slots.append([now, 0, 0])
        return slots[-1]

    def record_request(self, key: str) -> None:
        """Count a first attempt for ``key``."""
        with self._lock:
            self._current(key)[1] += 1
            if len(self._slots) > 10_000:
                # Keys idle for a whole ttl carry no budget information.
                horizon = self._clock() - self.budget.ttl
                for k in [k for k, s in self._slots.items() if not s or s[-1][0] <= horizon]:
                    del self._slots[k]

    def try_spend(self, key: str) -> bool:
        """Take one retry from ``key``'s budget; ``False`` when it is spent."""
        budget = self.budget
        with self._lock:
            current = self._current(key)
            slots = self._slots[key]
            requests = sum(s[1] for s in slots)
            retries = sum(s[2] for s in slots)
            if retries + 1 > budget.ratio * requests + budget.min_per_second * budget.ttl:
                return False
            current[2] += 1
            return True

"""Retry budget: retries paid for by recent successes, so an outage cannot multiply load.

Each bucket key holds up to ``reserve`` retry tokens and starts full. A retry spends
one token; a success (an answer that is not retried) refunds ``refund`` tokens, up to
``reserve``. A flaky server that answers most requests keeps the budget full, whatever
the throughput, so its calls get every retry the policy allows. In an outage nothing
is refunded: after ``reserve`` retries, each call makes one attempt, until answers come
back. botocore's retry quota and gRPC's retry throttling work this way; a budget of
a share of first attempts (Finagle, Envoy) refused retries a 34%-flaky server needed.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref

# Keys whose tokens are tracked at once; full keys are forgotten first (see _prune).
MAX_KEYS = 10_000


@dataclasses.dataclass(frozen=True)
class RetryBudget:
    """Retry tokens per bucket key, shared by the session's threads.

    :param reserve: tokens a key starts with and holds at most: the retries allowed
        with no success to pay for them (at the start, or in an outage).
    :param refund: tokens a success earns back; a retry costs one. At ``1.0``, retries
        beyond the reserve never outnumber successes.
    """

    reserve: int = 100
    refund: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.reserve, bool) or not isinstance(self.reserve, int) or self.reserve < 0:
            raise ValueError(
                f"RetryBudget.reserve must be a whole number >= 0, not {self.reserve!r}"
            )
        if (
            isinstance(self.refund, bool)
            or not isinstance(self.refund, (int, float))
            or not 0 <= self.refund < float("inf")
        ):
            raise ValueError(f"RetryBudget.refund must be a number >= 0, not {self.refund!r}")


class _Shard:
    """One thread's success counts; only its thread writes ``counts``."""

    __slots__ = ("counts", "seen", "thread")

    def __init__(self) -> None:
        self.thread = weakref.ref(threading.current_thread())
        # Successes per key since the shard was (re)set: written by the owner thread only.
        self.counts: dict[str, int] = {}
        # Counts already added to the tokens, per key: written under the tracker's lock.
        self.seen: dict[str, int] = {}


class BudgetTracker:
    """Retry tokens per key.

    A success on a key whose tokens are full (the usual case) costs one dict lookup
    and takes no lock. Otherwise it is counted in the thread's own shard, without a
    lock; a retry (rare) adds the shards' new counts to the key's tokens under the
    lock. Between two spends tokens only grow, capped, so adding the refunds late
    gives the same tokens as adding each at once.
    """

    def __init__(self, budget: RetryBudget) -> None:
        self.budget = budget
        self._local = threading.local()
        # _lock guards _tokens (writes), _shards, every shard's ``seen``, and each spend.
        self._lock = threading.Lock()
        # Tokens of keys that are not full; a key missing here is full. Read without the
        # lock by record_success: a success seen as "full" linearises before the spend
        # that made the key not full, when adding to it changed nothing.
        self._tokens: dict[str, float] = {}
        self._shards: list[_Shard] = []
        self._prune_at = 1000

    def after_fork(self) -> None:
        self.__init__(self.budget)  # type: ignore[misc]

    def record_success(self, key: str) -> None:
        """Refund ``key`` for an answered attempt."""
        if key not in self._tokens:
            return
        shard: _Shard | None = getattr(self._local, "shard", None)
        if shard is None:
            shard = self._local.shard = _Shard()
            with self._lock:
                self._shards.append(shard)
                self._prune()
        counts = shard.counts
        counts[key] = counts.get(key, 0) + 1

    def try_spend(self, key: str) -> bool:
        """Take one retry token from ``key``; ``False`` when none is left."""
        with self._lock:
            tokens = self._collect(key, self._tokens.get(key, float(self.budget.reserve)))
            allowed = tokens >= 1
            self._tokens[key] = tokens - 1 if allowed else tokens
            if len(self._tokens) > self._prune_at:
                self._prune()
            return allowed

    def tokens(self, key: str) -> float:
        """Tokens ``key`` holds now (for tests and debugging)."""
        with self._lock:
            if key not in self._tokens:
                return float(self.budget.reserve)
            tokens = self._tokens[key] = self._collect(key, self._tokens[key])
            return tokens

    def _collect(self, key: str, tokens: float) -> float:
        """``tokens`` plus the refunds counted since the last look (under ``_lock``)."""
        earned = 0
        for shard in self._shards:
            count = shard.counts.get(key, 0)
            seen = shard.seen.get(key, 0)
            if count > seen:
                earned += count - seen
                shard.seen[key] = count
        return min(float(self.budget.reserve), tokens + earned * self.budget.refund)

    def _prune(self) -> None:
        """Add every pending refund, drop full keys and ended threads (under ``_lock``).

        Each shard's counts restart from empty dicts: a success its owner counts into
        the old dict at that very moment is lost, which errs on the strict side.
        """
        for key in list(self._tokens):
            tokens = self._collect(key, self._tokens[key])
            if tokens >= self.budget.reserve:
                del self._tokens[key]
            else:
                self._tokens[key] = tokens
        alive = []
        for shard in self._shards:
            thread = shard.thread()
            if thread is not None and thread.is_alive():
                shard.counts = {}
                shard.seen = {}
                alive.append(shard)
        self._shards = alive
        if len(self._tokens) > MAX_KEYS:
            # Too many keys short of tokens: the oldest half start afresh (full).
            for key in list(self._tokens)[: len(self._tokens) - MAX_KEYS // 2]:
                del self._tokens[key]
        self._prune_at = min(MAX_KEYS, max(1000, 2 * len(self._tokens)))

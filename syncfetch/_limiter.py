"""Per-key sliding-window token buckets with bounded, fail-fast waits.

pyrate-limiter's ``Limiter`` is not used on purpose: its non-blocking acquire denies
falsely under lock contention, a timed acquire sleeps the whole timeout before
failing, and it adds ``buffer_ms`` to every wait. Its buckets are sound, so this
module drives them directly and owns the waiting.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import threading
import time
from collections.abc import Callable
from operator import attrgetter
from typing import Any, Protocol

from pyrate_limiter import InMemoryBucket, Rate, RateItem

from ._exceptions import RateLimitExceeded

# Housekeeping cadence: drop buckets whose every window has emptied, so a crawl
# over a million hosts does not keep a million buckets.
_SWEEP_EVERY = 10.0
_by_timestamp = attrgetter("timestamp")

#: Longest wait a header parser returns and a limiter stores, in seconds (about 31.7
#: years): longer than any real wait, yet storable as int64 milliseconds (SQLite,
#: Redis) and below ``threading.TIMEOUT_MAX``. The pipeline caps pauses far lower,
#: at ``RetryPolicy.retry_after_max``.
MAX_PAUSE = 1e9


def pause_seconds(seconds: float) -> float:
    """``seconds`` made safe to store: 0 (no pause) for NaN or <= 0, at most MAX_PAUSE."""
    if not seconds > 0:  # NaN compares false
        return 0.0
    return float(min(seconds, MAX_PAUSE))


@dataclasses.dataclass
class Token:
    """A token taken for one attempt; ``settle`` re-dates it once the request has arrived.

    :ivar key: the bucket key.
    :ivar handle: what the limiter needs to find the token again (backend-specific).
    :ivar waited: seconds the caller waited for it.
    """

    key: str
    handle: Any
    waited: float


class Limiter(Protocol):
    """What the pipeline needs from a limiter; one per session, shared by its threads.

    Implementations: :class:`KeyedLimiter` (one process), the SQLite and Redis
    limiters (shared by processes). Every method is thread-safe.
    """

    #: How the limiter sleeps while waiting for a token; the session replaces it with
    #: a sleep that ends (raising) when the session is closed.
    sleep: Callable[[float], None]

    def acquire(self, key: str, deadline: float | None) -> Token:
        """Take a token for ``key``, or raise ``RateLimitExceeded`` at once if the wait
        would pass ``deadline`` (a ``time.monotonic()`` value; ``None`` = no bound)."""
        ...

    def settle(self, token: Token) -> None:
        """Re-date ``token`` to now (capped): its request has reached the server."""
        ...

    def pause(self, key: str, seconds: float) -> None:
        """Record that ``key`` must not be sent to for ``seconds`` (the server asked).

        ``acquire`` does not wait for pauses: callers check :meth:`paused_for` before
        taking a concurrency slot, so no slot is held through a pause. The pipeline
        caps ``seconds`` at ``retry_after_max``; implementations still record nothing
        for NaN or a value <= 0 and cut a longer one than :data:`MAX_PAUSE` to it
        (:func:`pause_seconds`), so a backend never meets a value it cannot store.
        """
        ...

    def paused_for(self, key: str, deadline: float | None = None) -> float:
        """Seconds left of a pause on ``key`` (0 when there is none); a shared backend
        is not waited on past ``deadline`` (``time.monotonic()``; ``None``: its own timeouts)."""
        ...

    def after_fork(self) -> None:
        """Make the limiter usable in a forked child (new locks, connections, threads)."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...


class KeyedLimiter:
    """One in-memory bucket per key, all with the same rates.

    :param rates: binding rates, as returned by ``normalize_limits``; with none, only
        pauses are enforced.
    :param margin: seconds added to every window, to absorb the scheduling jitter
        between taking a token and the request reaching the server.
    :param clock: monotonic clock in seconds (injectable for tests).
    :param sleep: sleep function (injectable for tests).
    """

    def __init__(
        self,
        rates: list[Rate],
        *,
        margin: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        margin_ms = int(margin * 1000)
        self.rates = [Rate(r.limit, r.interval + margin_ms) for r in rates]
        # A token is re-dated by at most a tenth of the shortest window, and 100 ms.
        self._settle_cap_ms = min(100, self.rates[0].interval // 10) if rates else 0
        self._clock = clock
        self.sleep = sleep
        # _lock guards _buckets, _paused, _next_sweep and every bucket put/leak, so a
        # check-and-take is atomic across threads. Never held while sleeping.
        self._lock = threading.Lock()
        self._buckets: dict[str, InMemoryBucket] = {}
        self._paused: dict[str, float] = {}
        self._next_sweep = clock() + _SWEEP_EVERY

    def after_fork(self) -> None:
        """Replace the lock in a forked child: the parent may have held it at fork time."""
        self._lock = threading.Lock()

    def close(self) -> None:
        """Nothing to release: the buckets live in this process's memory."""

    def pause(self, key: str, seconds: float) -> None:
        """Record that ``key`` must not be sent to for ``seconds`` (a server asked).

        NaN or a value <= 0 records nothing; a longer one than :data:`MAX_PAUSE` is cut
        to it.
        """
        seconds = pause_seconds(seconds)
        if not seconds:
            return
        until = self._clock() + seconds
        with self._lock:
            if until > self._paused.get(key, 0.0):
                self._paused[key] = until

    def paused_for(self, key: str, deadline: float | None = None) -> float:
        """Seconds left of a pause on ``key`` (0 when there is none); never waits."""
        # A dict read is atomic under the GIL: no lock on this per-call path.
        until = self._paused.get(key)
        return 0.0 if until is None else max(0.0, until - self._clock())

    def acquire(self, key: str, deadline: float | None) -> Token:
        """Take one token for ``key``, waiting as the rates require.

        :param key: the bucket key.
        :param deadline: monotonic time by which the token must be taken, or ``None``.
        :returns: the token, with the seconds spent waiting.
        :raises RateLimitExceeded: at once when the needed wait would pass ``deadline``.
        """
        if not self.rates:
            return Token(key, None, 0.0)
        start = self._clock()
        while True:
            with self._lock:
                now = self._clock()
                item = RateItem(key, math.ceil(now * 1000))
                wait = self._try_take(key, item)
                if wait <= 0:
                    return Token(key, item, now - start)
            if deadline is not None and now + wait > deadline:
                raise RateLimitExceeded(
                    f"no rate-limit token for {key} within max_wait (next in {wait:.3f} s)",
                    key=key,
                    retry_after=wait,
                )
            self.sleep(wait)

    def settle(self, token: Token) -> None:
        """Re-date a token to now (capped), once its request is known to have arrived.

        The server counts a request when it arrives, which is after the token was
        taken by however long the sending thread waited for the GIL and the wire:
        measured on loopback with 16 threads, 0.5 ms typically but up to 47 ms. The
        response (or the failure) marks a moment at or after that arrival, so dating
        the token then keeps our windows at or behind the server's. The cap bounds
        what a slow server costs in throughput.
        """
        item: RateItem | None = token.handle
        if item is None:
            return
        new = min(math.ceil(self._clock() * 1000), item.timestamp + self._settle_cap_ms)
        if new <= item.timestamp:
            return
        with self._lock:
            bucket = self._buckets.get(token.key)
            if bucket is None:
                return
            items = bucket.items
            i = bisect.bisect_left(items, item.timestamp, key=_by_timestamp)
            while i < len(items) and items[i] is not item and items[i].timestamp == item.timestamp:
                i += 1
            if i < len(items) and items[i] is item:
                del items[i]
                item.timestamp = new
                bisect.insort(items, item, key=_by_timestamp)

    def record(self, key: str) -> None:
        """Count a token for ``key`` taken now elsewhere (a shared backend), even past the
        limit: if the backend fails, this process's recent sends still count here."""
        if not self.rates:
            return
        with self._lock:
            item = RateItem(key, math.ceil(self._clock() * 1000))
            if item.timestamp >= self._next_sweep * 1000:  # keeps the recorded log bounded
                self._sweep(item.timestamp / 1000)
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = InMemoryBucket(self.rates)
            bisect.insort(bucket.items, item, key=_by_timestamp)

    def _try_take(self, key: str, item: RateItem) -> float:
        """Put ``item`` in ``key``'s bucket; return 0 on success or the seconds to wait."""
        if item.timestamp >= self._next_sweep * 1000:
            self._sweep(item.timestamp / 1000)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = InMemoryBucket(self.rates)
        if bucket.put(item):
            return 0.0
        wait_ms = bucket.waiting(item)
        assert isinstance(wait_ms, int) and wait_ms >= 0  # weight 1 always fits eventually
        return max(wait_ms, 1) / 1000

    def _sweep(self, now: float) -> None:
        now_ms = math.ceil(now * 1000)
        for key, bucket in list(self._buckets.items()):
            bucket.leak(now_ms)
            if bucket.count() == 0:
                del self._buckets[key]
        for key, until in list(self._paused.items()):
            if until <= now:
                del self._paused[key]
        self._next_sweep = now + _SWEEP_EVERY

    def set_rates(self, rates: list[Rate], *, margin: float = 0.0) -> None:
        """Enforce ``rates`` from now on, keeping the tokens already in every window.

        The same token objects move to the new buckets, so calls in flight still settle
        theirs, and threads waiting for a token meet the new rates on their next look.
        """
        margin_ms = int(margin * 1000)
        new = [Rate(r.limit, r.interval + margin_ms) for r in rates]
        with self._lock:
            self.rates = new
            self._settle_cap_ms = min(100, new[0].interval // 10) if new else 0
            for key, bucket in list(self._buckets.items()):
                if new:
                    fresh = self._buckets[key] = InMemoryBucket(new)
                    fresh.items = bucket.items
                else:
                    del self._buckets[key]

    def bucket_count(self) -> int:
        """Number of keys with a live bucket (for tests and stats)."""
        with self._lock:
            return len(self._buckets)

"""The concurrency cap: a semaphore whose permits are leases released exactly once."""

from __future__ import annotations

import threading
import time

from ._exceptions import RateLimitExceeded


class Lease:
    """One concurrency slot; :meth:`release` may be called any number of times, from any thread."""

    __slots__ = ("__weakref__", "_once", "_sem")

    def __init__(self, sem: Permits) -> None:
        self._sem = sem
        self._once = threading.Lock()

    def release(self) -> None:
        """Give the slot back (only the first call counts)."""
        if self._once.acquire(blocking=False):
            self._sem.release()


class Permits:
    """A counting semaphore whose uncontended path takes no Python-level lock.

    ``threading.Semaphore`` runs a Condition under a lock on every acquire and
    release, twice per request here. Permits are items of a list instead:
    ``list.pop`` and ``list.append`` are atomic under the GIL, and only a thread
    that finds none left waits on the condition.
    """

    def __init__(self, size: int) -> None:
        self._free = [None] * size
        # _cond's lock guards _waiters; a waiter re-checks _free while holding it,
        # and release notifies under it, so no wake-up is lost.
        self._cond = threading.Condition(threading.Lock())
        self._waiters = 0

    def acquire(self, timeout: float | None) -> bool:
        try:
            self._free.pop()
            return True
        except IndexError:
            pass
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._waiters += 1
            try:
                while True:
                    try:
                        self._free.pop()
                        return True
                    except IndexError:
                        pass
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._cond.wait(left)
            finally:
                self._waiters -= 1

    def release(self) -> None:
        self._free.append(None)
        if self._waiters:
            with self._cond:
                self._cond.notify()


class Slots:
    """At most ``size`` attempts in flight across all threads of a session."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._sem = Permits(size)

    def after_fork(self) -> None:
        """Start afresh in a forked child: leases held by parent threads never come back."""
        self._sem = Permits(self.size)

    def acquire(self, timeout: float | None, key: str) -> Permits:
        """Wait for a slot; give it back with ``release()`` on the returned permits.

        The permits are returned (not stored) so a slot taken before a fork is given
        back to the pool it came from.

        :param timeout: seconds to wait at most, or ``None`` to wait as long as it takes.
        :param key: bucket key, for the error message.
        :raises RateLimitExceeded: when no slot frees up in time.
        """
        sem = self._sem
        if not sem.acquire(None if timeout is None else max(0.0, timeout)):
            raise RateLimitExceeded(
                f"no concurrency slot for {key} within max_wait ({self.size} in flight)",
                key=key,
            )
        return sem

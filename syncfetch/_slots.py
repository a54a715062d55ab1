"""The concurrency cap: a semaphore whose permits are leases released exactly once."""

from __future__ import annotations

import threading
import time

from ._exceptions import RateLimitExceeded, SessionClosed


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

    def acquire(self, timeout: float | None, closing: threading.Event | None = None) -> bool:
        """Take a permit; False when ``timeout`` passes first.

        :raises SessionClosed: when ``closing`` is set while waiting (see :meth:`wake_all`).
        """
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
                    # Checked under _cond's lock, and wake_all notifies under it after
                    # the event is set: a close() cannot slip between check and wait.
                    if closing is not None and closing.is_set():
                        raise SessionClosed("the session was closed while this call waited")
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

    def wake_all(self) -> None:
        """Wake every waiter, so each re-checks its ``closing`` event (set before this)."""
        with self._cond:
            self._cond.notify_all()


class Slots:
    """At most ``size`` attempts in flight across all threads of a session."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._sem = Permits(size)

    def after_fork(self) -> None:
        """Start afresh in a forked child: leases held by parent threads never come back."""
        self._sem = Permits(self.size)

    def wake(self) -> None:
        """Wake every waiter (``close()``: waiters whose ``closing`` is set raise)."""
        self._sem.wake_all()

    def acquire(
        self, timeout: float | None, key: str, closing: threading.Event | None = None
    ) -> Permits:
        """Wait for a slot; give it back with ``release()`` on the returned permits.

        The permits are returned (not stored) so a slot taken before a fork is given
        back to the pool it came from.

        :param timeout: seconds to wait at most, or ``None`` to wait as long as it takes.
        :param key: bucket key, for the error message.
        :param closing: the call's closing event: once set (and :meth:`wake` called),
            the wait ends.
        :raises RateLimitExceeded: when no slot frees up in time.
        :raises SessionClosed: when ``closing`` is set while waiting.
        """
        sem = self._sem
        if not sem.acquire(None if timeout is None else max(0.0, timeout), closing):
            raise RateLimitExceeded(
                f"no concurrency slot for {key} within max_wait ({self.size} in flight)",
                key=key,
            )
        return sem

"""The concurrency cap: a semaphore whose permits are leases released exactly once."""

from __future__ import annotations

import threading

from ._exceptions import RateLimitExceeded


class Lease:
    """One concurrency slot; :meth:`release` may be called any number of times, from any thread."""

    __slots__ = ("__weakref__", "_once", "_sem")

    def __init__(self, sem: threading.Semaphore) -> None:
        self._sem = sem
        self._once = threading.Lock()

    def release(self) -> None:
        """Give the slot back (only the first call counts)."""
        if self._once.acquire(blocking=False):
            self._sem.release()


class Slots:
    """At most ``size`` attempts in flight across all threads of a session."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._sem = threading.Semaphore(size)

    def __getstate__(self) -> dict[str, int]:
        return {"size": self.size}

    def __setstate__(self, state: dict[str, int]) -> None:
        self.__init__(state["size"])  # type: ignore[misc]

    def after_fork(self) -> None:
        """Start afresh in a forked child: leases held by parent threads never come back."""
        self._sem = threading.Semaphore(self.size)

    def acquire(self, timeout: float | None, key: str) -> Lease:
        """Wait for a slot.

        :param timeout: seconds to wait at most, or ``None`` to wait as long as it takes.
        :param key: bucket key, for the error message.
        :raises RateLimitExceeded: when no slot frees up in time.
        """
        sem = self._sem
        if not sem.acquire(timeout=None if timeout is None else max(0.0, timeout)):
            raise RateLimitExceeded(
                f"no concurrency slot for {key} within max_wait ({self.size} in flight)",
                key=key,
            )
        return Lease(sem)

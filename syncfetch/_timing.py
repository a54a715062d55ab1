"""Clock and sleep used by every wait, and the testing switch that removes backoff waits."""

from __future__ import annotations

import threading
import time

monotonic = time.monotonic

# Guarded by the GIL: a bool assignment is atomic, and readers only need a recent value.
_testing = False
_testing_lock = threading.Lock()


def set_testing(enabled: bool = True) -> None:
    """Turn waits between retries into no-ops for the whole process (like ``stamina.set_testing``).

    Backoff sleeps and the waits a server asks for (``Retry-After``, a spent quota) are
    skipped while testing; rate-limit and concurrency waits are not, because they are
    what keeps a server within its configured limit.
    Log records and stats still report the wait that would have happened.

    :param enabled: ``True`` to skip retry waits, ``False`` to restore them.
    """
    global _testing
    with _testing_lock:
        _testing = bool(enabled)


def is_testing() -> bool:
    """Return whether :func:`set_testing` has switched retry waits off.

    :returns: ``True`` while retry waits are skipped.
    """
    return _testing


def backoff_sleep(seconds: float) -> None:
    """Sleep for a backoff or a server-requested pause, unless the testing switch is on."""
    if seconds > 0 and not _testing:
        time.sleep(seconds)

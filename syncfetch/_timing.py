"""The testing switch that removes backoff and server-requested waits."""

from __future__ import annotations

# A bool assignment is atomic and readers only need a recent value: no lock.
_testing = False


def set_testing(enabled: bool = True) -> None:
    """Turn waits between retries into no-ops for the whole process (like ``stamina.set_testing``).

    Backoff sleeps and the waits a server asks for (``Retry-After``, a spent quota) are
    skipped while testing; rate-limit and concurrency waits are not, because they are
    what keeps a server within its configured limit.
    Log records and stats still report the wait that would have happened.

    :param enabled: ``True`` to skip retry waits, ``False`` to restore them.
    """
    global _testing
    _testing = bool(enabled)


def is_testing() -> bool:
    """Return whether :func:`set_testing` has switched retry waits off.

    :returns: ``True`` while retry waits are skipped.
    """
    return _testing

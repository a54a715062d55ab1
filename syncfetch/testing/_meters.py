"""The fake provider's windows: sliding, fixed and leaky, counting requests or cost.

Not thread-safe on their own: the server calls them under its lock.
"""

from __future__ import annotations

import collections
import dataclasses
import math

#: Kinds of window a limit may be enforced with.
WINDOW_KINDS = ("sliding", "fixed", "leaky")


@dataclasses.dataclass(frozen=True)
class Window:
    """One limit: ``count`` per ``seconds``, of requests or of cost, on a route or everywhere.

    :param count: requests (or cost points) admitted per window.
    :param seconds: the window's length (for ``leaky``: the time to refill ``count``).
    :param kind: ``"sliding"`` (any ``seconds``-long span), ``"fixed"`` (aligned windows
        starting when the server starts) or ``"leaky"`` (a bucket of ``count`` refilled at
        ``count / seconds`` per second, as Shopify's GraphQL cost bucket).
    :param unit: ``"requests"`` or ``"cost"`` (each request weighs its route's cost).
    :param route: a path prefix the window applies to, or ``None`` for every path.
    """

    count: int
    seconds: float
    kind: str = "sliding"
    unit: str = "requests"
    route: str | None = None


class Meter:
    """The state of one :class:`Window`.

    :param slack: sliding windows only: arrivals within ``slack`` seconds of leaving the
        window no longer count against a new one (a tolerance for the server's own delay in
        stamping arrivals; the benchmarks use it).
    """

    def __init__(self, window: Window, start: float, slack: float = 0.0) -> None:
        self.window = window
        self._start = start
        self._slack = slack if window.kind == "sliding" else 0.0
        self._log: collections.deque[tuple[float, float]] = collections.deque()
        self._used = 0.0  # sliding: sum of the log; fixed: used in the current window
        self._index = 0  # fixed: the current window's number
        self._level = float(window.count)  # leaky: points available
        self._last = start  # leaky: when _level was computed

    def _advance(self, now: float) -> None:
        w = self.window
        if w.kind == "sliding":
            while self._log and self._log[0][0] <= now - w.seconds:
                self._used -= self._log.popleft()[1]
        elif w.kind == "fixed":
            index = math.floor((now - self._start) / w.seconds)
            if index != self._index:
                self._index, self._used = index, 0.0
        else:
            rate = w.count / w.seconds
            self._level = min(float(w.count), self._level + max(0.0, now - self._last) * rate)
            self._last = max(self._last, now)

    def wait(self, now: float, amount: float) -> float:
        """0.0 if ``amount`` fits now, else the seconds until it would."""
        self._advance(now)
        w = self.window
        if amount > w.count:
            return w.seconds  # never fits: refused, come back after a window
        if w.kind == "leaky":
            return 0.0 if self._level >= amount else (amount - self._level) * w.seconds / w.count
        used = self._used
        if self._slack > 0:
            edge = now - w.seconds + self._slack
            used -= sum(taken for at, taken in self._log if at <= edge)
        if used + amount <= w.count:
            return 0.0
        if w.kind == "fixed":
            return self.reset_in(now)
        freed = used + amount - w.count
        for at, taken in self._log:
            if at <= now - w.seconds + self._slack:
                continue  # no longer counted
            freed -= taken
            if freed <= 0:
                # Still counted, so the wait is > 0 even where rounding makes
                # at + seconds equal now (0.0993 + 0.5 == 0.5992999999999999).
                return max(1e-9, at + w.seconds - self._slack - now)
        return w.seconds  # pragma: no cover - the log holds more than is missing

    def take(self, now: float, amount: float) -> None:
        """Count ``amount`` at ``now`` (after :meth:`wait` said it fits)."""
        self._advance(now)
        if self.window.kind == "leaky":
            self._level -= amount
        else:
            self._used += amount
            if self.window.kind == "sliding":
                self._log.append((now, amount))

    def remaining(self, now: float) -> float:
        """Requests or points left now."""
        self._advance(now)
        left = self._level if self.window.kind == "leaky" else self.window.count - self._used
        return max(0.0, left)

    def reset_in(self, now: float) -> float:
        """Seconds until the window is whole again (sliding: when its newest entry leaves)."""
        self._advance(now)
        w = self.window
        if w.kind == "fixed":
            return self._start + (self._index + 1) * w.seconds - now
        if w.kind == "leaky":
            return (w.count - self._level) * w.seconds / w.count
        return max(0.0, self._log[-1][0] + w.seconds - now) if self._log else 0.0

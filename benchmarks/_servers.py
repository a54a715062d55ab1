"""The benchmarks' loopback server: ``syncfetch.testing.FakeAPI`` in its own process.

The fake API runs in a child process (``spawn``), so it never competes with the client for
the client's GIL: what a benchmark measures is the client. It keeps connections alive,
disables Nagle, answers ``200`` with a small JSON body, and can enforce a strict sliding
window: a request is admitted if fewer than ``count`` admitted arrivals fall in
``(now - seconds, now]`` for every ``(count, seconds)``; otherwise it gets ``429`` with
``Retry-After`` and is not counted. ``slack`` shortens every window by that many seconds
(the stamping delay a server tolerates); ``latency`` delays every answer after its arrival
is stamped. When stopped, the counts come from the fake's record of arrivals.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence
from types import TracebackType

from syncfetch.testing import Arrival, FakeAPI

Limits = list[tuple[int, float]]


@dataclasses.dataclass(frozen=True)
class Counts:
    """What the server saw: requests answered 200, and requests refused with 429."""

    admitted: int
    rejected: int
    strict_over: int = 0  # admitted only thanks to the slack


def strict_over(arrivals: Sequence[Arrival], limits: Limits) -> int:
    """Admitted arrivals that the windows without slack would have refused."""
    times: list[float] = []
    over = 0
    for a in arrivals:
        if a.status != 200:
            continue
        over += any(
            len(times) - bisect.bisect_right(times, a.at - seconds) >= count
            for count, seconds in limits
        )
        times.append(a.at)
    return over


class ServerProcess:
    """``with ServerProcess(limits) as srv:`` serves on ``srv.url``; ``srv.stop()`` -> Counts.

    :param limits: ``[(count, seconds), ...]`` enforced as strict sliding windows, or ``None``
        (or ``[]``) to admit everything.
    :param slack: seconds by which every window is shortened (stamping slack).
    :param latency: seconds each answer waits after its arrival is stamped.
    """

    def __init__(
        self, limits: Limits | None = None, *, slack: float = 0.0, latency: float = 0.0
    ) -> None:
        self.limits = list(limits or [])
        self._api = FakeAPI(self.limits or None, slack=slack, latency=latency)
        self.url = ""
        self.counts: Counts | None = None

    def __enter__(self) -> ServerProcess:
        self._api.start()
        self.url = self._api.url + "/"
        return self

    def stop(self) -> Counts:
        if self.counts is None:
            self._api.stop()
            arrivals = self._api.arrivals()
            self.counts = Counts(
                sum(1 for a in arrivals if a.status == 200),
                sum(1 for a in arrivals if a.status == 429),
                strict_over(arrivals, self.limits),
            )
        return self.counts

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.counts is None:
            if exc_type is None:
                self.stop()
            else:
                self._api.stop()

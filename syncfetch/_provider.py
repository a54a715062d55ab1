"""A strict third-party API on 127.0.0.1 for ``syncfetch demo`` (standard library only).

It enforces sliding windows (by default 25 requests per second, a burst of 25 at once,
and 1,000 per minute) and answers ``429`` with ``Retry-After`` above them; only admitted
requests count in the windows. Admitted requests then fail like a real provider's: about
30% ``503`` and 2% TCP resets, after a latency of 20 ms. The outcome of the n-th admitted
attempt at a path depends only on the seed, the path and n, so every client of the demo
meets the same faults. It is :class:`syncfetch.testing.FakeAPI`'s server configured from a
:class:`ProviderConfig`: :class:`Provider` runs it in a child process, so it never competes
for the client's GIL, and returns every arrival when stopped.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import sys
from collections.abc import Sequence
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from .testing._answers import _Decision
from .testing._meters import Meter, Window
from .testing._server import RESET, FakeConfig, FakeServer

if TYPE_CHECKING:
    from .testing import FakeAPI

Limits = Sequence[tuple[int, float]]


@dataclasses.dataclass(frozen=True)
class ProviderConfig:
    """How strict and how flaky the provider is.

    :param rate: requests admitted per sliding second (also the burst); 0 for no limit.
    :param per_minute: requests admitted per sliding minute; 0 for no limit.
    :param fail_rate: share of admitted requests answered ``503``.
    :param reset_rate: share of admitted requests answered with a TCP reset.
    :param latency: seconds slept before every answer.
    :param seed: seed of the fault draws.
    :param port: port on 127.0.0.1; 0 picks a free one.
    """

    rate: int = 25
    per_minute: int = 1000
    fail_rate: float = 0.3
    reset_rate: float = 0.02
    latency: float = 0.02
    seed: int = 0
    port: int = 0

    @property
    def limits(self) -> list[tuple[int, float]]:
        """The windows as ``[(count, seconds), ...]``."""
        pairs = [(self.rate, 1.0), (self.per_minute, 60.0)]
        return [(count, seconds) for count, seconds in pairs if count > 0]

    def describe(self) -> str:
        """One line for humans."""
        limits = " and ".join(f"{c}/{'second' if s == 1 else 'minute'}" for c, s in self.limits)
        return (
            f"limit {limits or 'none'}, {self.fail_rate:.0%} 503s, {self.reset_rate:.0%} resets, "
            f"{self.latency * 1000:.0f} ms latency, seed {self.seed}"
        )

    def fake(self) -> FakeConfig:
        """The same provider as a :class:`syncfetch.testing.FakeAPI` configuration."""
        return FakeConfig(
            windows=tuple(Window(count, seconds) for count, seconds in self.limits),
            fail_rate=self.fail_rate,
            reset_rate=self.reset_rate,
            latency=self.latency,
            seed=self.seed,
            port=self.port,
        )


class Arrival(NamedTuple):
    """One request the provider received: monotonic arrival time, path, status (0: reset)."""

    at: float
    path: str
    status: int


class SlidingWindow:
    """Exact sliding-window admission: fewer than ``count`` admitted in ``(now - s, now]``.

    The fake API's sliding meters; not thread-safe on its own.
    """

    def __init__(self, limits: Limits) -> None:
        self._meters = [Meter(Window(count, seconds), 0.0) for count, seconds in limits]

    def admit(self, now: float) -> float:
        """Count a request arriving at ``now`` if every window has room.

        :returns: 0.0 when admitted, else the seconds until it would be.
        """
        wait = max((m.wait(now, 1) for m in self._meters), default=0.0)
        if wait > 0:
            return wait
        for meter in self._meters:
            meter.take(now, 1)
        return 0.0


def retry_after(wait: float) -> int:
    """``Retry-After`` seconds for a wait: rounded up, at least 1."""
    return max(1, math.ceil(wait))


def floor_seconds(admitted: int, limits: Limits) -> float:
    """Earliest time, from a first request at 0, at which ``admitted`` requests can all be in.

    The earliest schedule is greedy: each request goes at the first moment every window
    has room, i.e. ``t[k] = max(t[k-1], t[k-count] + seconds)`` for each window.

    :param admitted: number of requests the provider admitted.
    :param limits: the windows as ``[(count, seconds), ...]``.
    :returns: the arrival time of the last of them (0.0 for none or one).
    """
    times: list[float] = []
    for k in range(admitted):
        t = times[-1] if times else 0.0
        for count, seconds in limits:
            if k >= count:
                t = max(t, times[k - count] + seconds)
        times.append(t)
    return times[-1] if times else 0.0


class ProviderServer(FakeServer):
    """The provider, served from this process (see :class:`Provider` for a child process).

    A :class:`syncfetch.testing._server.FakeServer` whose 200s echo the path.
    """

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config.fake())
        self.config = config

    @property
    def url(self) -> str:
        """Base URL, ending with a slash."""
        return f"http://127.0.0.1:{self.port}/"

    def reply(self, method: str, path: str, decision: _Decision) -> tuple[int, dict[str, str], Any]:
        status, headers, body = decision.reply
        if status == 200:
            body = {"path": path, "ok": True}
        elif status == 503:
            body = {"error": "temporarily unavailable"}
        return status, headers, body

    def decide(self, path: str, now: float) -> tuple[int, float]:
        """Status for a GET of ``path`` arriving at ``now``, and the wait for a 429."""
        decision = self.judge("GET", path, {}, now)
        return decision.status, decision.wait

    def records(self) -> list[Arrival]:
        """Every arrival so far, in arrival order."""
        return [Arrival(a.at, a.path, a.status) for a in self.arrivals()]


class Provider:
    """The provider in a child process: ``with Provider(cfg) as p:`` serves on ``p.url``.

    A :class:`syncfetch.testing.FakeAPI` (plain dialect, sliding windows) configured from
    ``config``: the same admission, fault draws and ``Retry-After`` as :class:`ProviderServer`.

    :param config: the provider's settings.
    """

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.url = ""
        self._api: FakeAPI | None = None

    def start(self) -> Provider:
        """Start the child process and wait until it listens.

        :raises RuntimeError: when the child does not come up within 30 s.
        """
        from .testing import FakeAPI  # syncfetch.testing builds on this module

        cfg = self.config
        self._api = FakeAPI(
            cfg.limits or None,
            fail_rate=cfg.fail_rate,
            reset_rate=cfg.reset_rate,
            latency=cfg.latency,
            seed=cfg.seed,
        ).start()
        self.url = self._api.url + "/"
        return self

    def stop(self) -> list[Arrival]:
        """Stop serving and return every arrival (empty if the child is gone)."""
        if self._api is None:
            return []
        self._api.stop()
        return [Arrival(a.at, a.path, a.status) for a in self._api.arrivals()]

    def terminate(self) -> None:
        """End the child process now (idempotent)."""
        if self._api is not None:
            self._api.stop()

    def __enter__(self) -> Provider:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.terminate()


def serve(config: ProviderConfig, out: IO[str] = sys.stdout) -> None:
    """Run the provider in the foreground until Ctrl-C, then print what it saw.

    :param config: the provider's settings.
    :param out: where the URL and the summary go.
    """
    server = ProviderServer(config)
    print(f"serving on {server.url} ({config.describe()}); Ctrl-C to stop", file=out, flush=True)
    try:
        server.serve_forever(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    counts = collections.Counter(r.status for r in server.records())
    summary = ", ".join(f"{n} x {'reset' if s == RESET else s}" for s, n in sorted(counts.items()))
    print(f"\nreceived {sum(counts.values())} requests: {summary or 'none'}", file=out)

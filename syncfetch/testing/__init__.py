"""A strict fake API for testing code that calls rate-limited APIs (yours and ours).

``FakeAPI`` serves on 127.0.0.1, by default from a child process (so it never competes
with your code for the GIL), enforces limits exactly, answers in a real provider's header
dialect, and records every arrival, so a test can say "this code never sends more than 30
requests in any minute"::

    from syncfetch.testing import FakeAPI

    with FakeAPI("30/minute", dialect="github") as api:
        my_client.sync_everything(base_url=api.url)
        assert api.count(status=403) == 0
        assert api.max_in_window(60) <= 30

With pytest, the ``fake_api`` fixture (registered through a ``pytest11`` entry point) starts
one with the same arguments and stops it after the test: ``api = fake_api("30/minute")``.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import threading
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType

from .._rates import parse_rate
from ._answers import go_duration
from ._child import ServerChild
from ._meters import WINDOW_KINDS, Window
from ._server import DIALECTS, Arrival, FakeConfig, FakeServer

__all__ = ["DIALECTS", "WINDOW_KINDS", "Arrival", "FakeAPI", "Window", "go_duration"]

#: A limit: ``"30/minute"`` (as ``Session(limits=...)`` takes), ``(count, seconds)``, or a
#: :class:`Window`; or a list of these.
LimitSpec = str | tuple[int, float] | Window
Limits = LimitSpec | Sequence[LimitSpec] | None


def _windows(limits: Limits, kind: str, unit: str, route: str | None) -> list[Window]:
    if limits is None:
        return []
    items: Iterable[object]
    if isinstance(limits, (str, Window)) or (
        isinstance(limits, tuple) and len(limits) == 2 and not isinstance(limits[0], (str, tuple))
    ):
        items = [limits]
    else:
        items = limits
    windows = []
    for item in items:
        if isinstance(item, Window):
            windows.append(item)
            continue
        if isinstance(item, str):
            rate = parse_rate(item)
            count, seconds = int(rate.limit), rate.interval / 1000
        elif (
            isinstance(item, tuple)
            and len(item) == 2
            and isinstance(item[0], int)
            and isinstance(item[1], (int, float))
        ):
            count, seconds = item
        else:
            raise TypeError(
                f"a limit must be 'N/period', (count, seconds) or a Window, not {item!r}"
            )
        if count < 1 or not seconds > 0:
            raise ValueError(f"a limit needs a count >= 1 and seconds > 0, not {item!r}")
        windows.append(Window(count, float(seconds), kind, unit, route))
    return windows


class FakeAPI:
    """A strict fake provider on 127.0.0.1: ``with FakeAPI("30/minute") as api:``.

    :param limits: limits on requests to every path: ``"30/minute"``, ``(30, 60.0)``, a
        :class:`Window`, or a list of these. ``None``: no limit.
    :param dialect: the headers and refusals of a provider: one of :data:`DIALECTS`
        (``"plain"``: 429 with ``Retry-After``; ``"github"``: 403 and ``X-RateLimit-*``;
        ``"openai"``: ``x-ratelimit-*-requests``/``-tokens`` with durations; ...).
    :param window: how limits given as strings or tuples are enforced: ``"sliding"``,
        ``"fixed"`` or ``"leaky"`` (see :class:`Window`).
    :param routes: limits per path prefix, ``{"/search": "30/minute"}`` (Discord's buckets,
        GitHub's secondary limits), in addition to ``limits``.
    :param cost_limits: limits counted in cost points (tokens, query cost, request weight).
    :param costs: the cost of a request per path prefix, ``{"/graphql": 10}``; default 1.
    :param fail_rate: share of admitted requests answered ``503``.
    :param reset_rate: share of admitted requests answered with a TCP reset.
    :param lost_rate: share of admitted requests processed in full (a resource created, an
        idempotency key remembered) whose answer is lost to a TCP reset: what makes a
        retried POST dangerous without an ``Idempotency-Key``.
    :param latency: seconds slept before every answer.
    :param retry_after: send ``Retry-After`` on refusals (where the dialect does).
    :param ban_after: refusals in a row after which the client is banned (Binance's 418);
        ``None``: never.
    :param ban_seconds: how long a ban lasts.
    :param seed: seed of the fault draws (the n-th admitted request to a path always meets
        the same fault).
    :param slack: seconds by which sliding windows are shortened when admitting: arrivals
        that close to leaving a window no longer count (a tolerance for the fake's own
        delay in stamping arrivals); 0 enforces the windows exactly.
    :param process: serve from a child process (``True``) or a thread of this one.
    :raises ValueError: for an unknown dialect or window kind, or a bad limit or rate.
    :raises TypeError: for a limit of the wrong type.
    """

    def __init__(
        self,
        limits: Limits = None,
        *,
        dialect: str = "plain",
        window: str = "sliding",
        routes: Mapping[str, Limits] | None = None,
        cost_limits: Limits = None,
        costs: Mapping[str, int] | None = None,
        fail_rate: float = 0.0,
        reset_rate: float = 0.0,
        lost_rate: float = 0.0,
        latency: float = 0.0,
        retry_after: bool = True,
        ban_after: int | None = None,
        ban_seconds: float = 120.0,
        seed: int = 0,
        slack: float = 0.0,
        process: bool = True,
    ) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}, not {dialect!r}")
        if window not in WINDOW_KINDS:
            raise ValueError(f"window must be one of {', '.join(WINDOW_KINDS)}, not {window!r}")
        shares = (("fail_rate", fail_rate), ("reset_rate", reset_rate), ("lost_rate", lost_rate))
        for name, rate in shares:
            if not 0 <= rate <= 1:
                raise ValueError(f"{name} must be between 0 and 1, not {rate!r}")
        if fail_rate + reset_rate + lost_rate > 1:
            raise ValueError("fail_rate + reset_rate + lost_rate must be at most 1")
        if not 0 <= latency <= 60:
            raise ValueError(f"latency must be 0 to 60 seconds, not {latency!r}")
        if not 0 <= slack <= 60:
            raise ValueError(f"slack must be 0 to 60 seconds, not {slack!r}")
        if ban_after is not None and ban_after < 0:
            raise ValueError(f"ban_after must be >= 0 or None, not {ban_after!r}")
        windows = _windows(limits, window, "requests", None)
        for prefix, route_limits in (routes or {}).items():
            windows += _windows(route_limits, window, "requests", prefix)
        windows += _windows(cost_limits, window, "cost", None)
        for w in windows:
            if w.kind not in WINDOW_KINDS or w.unit not in ("requests", "cost"):
                raise ValueError(f"unknown window kind or unit in {w!r}")
        for prefix, cost in (costs or {}).items():
            if not isinstance(cost, int) or cost < 0:
                raise ValueError(f"the cost of {prefix!r} must be an int >= 0, not {cost!r}")
        self.config = FakeConfig(
            windows=tuple(windows),
            costs=tuple((costs or {}).items()),
            fail_rate=fail_rate,
            reset_rate=reset_rate,
            lost_rate=lost_rate,
            latency=latency,
            retry_after=retry_after,
            dialect=dialect,
            ban_after=ban_after,
            ban_seconds=ban_seconds,
            seed=seed,
            slack=slack,
        )
        self.process = process
        #: Base URL, without a trailing slash (``""`` until started).
        self.url = ""
        # _lock guards _server, _child and _last.
        self._lock = threading.Lock()
        self._server: FakeServer | None = None
        self._child: ServerChild | None = None
        self._last: list[Arrival] = []  # what was seen, once stopped

    def url_for(self, path: str) -> str:
        """The full URL of ``path`` (``"/items/1"``) on the fake provider."""
        return self.url + (path if path.startswith("/") else "/" + path)

    def start(self) -> FakeAPI:
        """Start serving and wait until it listens.

        :raises RuntimeError: when the child process does not come up within 30 s.
        """
        if self.url:
            return self
        if not self.process:
            self._server = FakeServer(self.config).start()
            self.url = f"http://127.0.0.1:{self._server.port}"
            return self
        child = ServerChild(functools.partial(FakeServer, self.config))
        port = child.start()
        self._child = child
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        """Stop serving (idempotent). :meth:`arrivals` keeps answering with what was seen;
        :meth:`start` serves again, with fresh windows."""
        with self._lock:
            self.url = ""
            if self._server is not None:
                self._last = self._server.arrivals()
                self._server.stop()
                self._server = None
            if self._child is not None:
                with contextlib.suppress(RuntimeError):
                    self._last = self._child.call("arrivals")
                self._child.stop()
                self._child = None

    def arrivals(self, path: str | None = None) -> list[Arrival]:
        """Every request received so far, in arrival order (only those to ``path``, if given).

        ``path`` matches the path with its query string, or a prefix of it ending in ``*``
        (``"/items/*"``).
        """
        with self._lock:
            if self._server is not None:
                records = self._server.arrivals()
            elif self._child is not None:
                try:
                    records = self._child.call("arrivals")
                except RuntimeError:
                    records = []
            else:
                records = list(self._last)
        if path is None:
            return records
        if path.endswith("*"):
            return [a for a in records if a.path.startswith(path[:-1])]
        return [a for a in records if a.path == path]

    def clear(self) -> None:
        """Forget the arrivals so far; the limits keep their state."""
        with self._lock:
            if self._server is not None:
                self._server.clear()
            elif self._child is not None:
                with contextlib.suppress(RuntimeError):
                    self._child.call("clear")
            self._last = []

    def count(self, status: int | None = None, path: str | None = None) -> int:
        """How many requests arrived (with ``status``, to ``path``); status 0 is a reset."""
        return sum(1 for a in self.arrivals(path) if status is None or a.status == status)

    def statuses(self, path: str | None = None) -> list[int]:
        """The status answered to each request, in arrival order."""
        return [a.status for a in self.arrivals(path)]

    def max_in_window(
        self, seconds: float, path: str | None = None, *, statuses: Iterable[int] | None = None
    ) -> int:
        """The most requests that arrived within any span of ``seconds``.

        "This code never exceeds 30 a minute" is ``api.max_in_window(60) <= 30``. Every
        arrival counts, refused ones included, unless ``statuses`` says which to count.
        """
        wanted = None if statuses is None else set(statuses)
        times = sorted(a.at for a in self.arrivals(path) if wanted is None or a.status in wanted)
        best = 0
        for i, t in enumerate(times):
            # arrivals in the half-open span (t - seconds, t]
            best = max(best, i + 1 - bisect.bisect_right(times, t - seconds, 0, i + 1))
        return best

    def __enter__(self) -> FakeAPI:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url or "not started"
        return f"<FakeAPI {self.config.dialect} {where}>"

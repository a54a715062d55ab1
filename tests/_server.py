"""A scripted, real HTTP/1.1 server for the syncfetch test suite.

A thin layer over the project's one local server, ``syncfetch.testing``'s ``FakeServer``
(socket handling, connection cutting, body reading, resets, sliding-window meters, the
process of its own): what is added here is per-path scripts of answers and a richer record.

Typical use::

    server.script("/flaky", Step(status=503), Step(status=503), Step())
    server.limit([(10, 1.0)], retry_after=1)
    ...
    assert server.statuses("/flaky") == [503, 503, 200]
    assert server.max_in_window(1.0) <= 10
"""

from __future__ import annotations

import bisect
import email.utils
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from syncfetch.testing._child import ServerChild
from syncfetch.testing._meters import Meter, Window
from syncfetch.testing._server import FakeConfig, FakeHandler, FakeServer

__all__ = ["Headers", "Record", "ScriptedServer", "ServerProcess", "Step", "http_date"]

HeaderValue = str | Callable[[], str]
_S = TypeVar("_S", bound="ScriptedServer")
ACTIONS = frozenset({"respond", "reset", "truncate", "trickle", "hang"})


def http_date(offset: float = 0.0) -> str:
    """Return an IMF-fixdate for now + ``offset`` seconds (e.g. for ``Retry-After``)."""
    return email.utils.formatdate(time.time() + offset, usegmt=True)


class Headers(MutableMapping[str, str]):
    """Case-insensitive header mapping that iterates with the original casing."""

    def __init__(self, data: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        self._store: dict[str, tuple[str, str]] = {}
        items = data.items() if isinstance(data, Mapping) else data
        for name, value in items:
            old = self._store.get(name.lower())
            # Repeated fields are combined as RFC 9110 section 5.3 allows.
            self._store[name.lower()] = (name, f"{old[1]}, {value}" if old else value)

    def __getitem__(self, name: str) -> str:
        return self._store[name.lower()][1]

    def __setitem__(self, name: str, value: str) -> None:
        self._store[name.lower()] = (name, value)

    def __delitem__(self, name: str) -> None:
        del self._store[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._store.values())

    def __len__(self) -> int:
        return len(self._store)

    def __repr__(self) -> str:
        return f"Headers({dict(self.items())!r})"


@dataclass
class Step:
    """One scripted answer. ``action`` is respond, reset, truncate, trickle or hang.

    ``headers`` values may be zero-argument callables, evaluated when the response is sent.
    For ``hang``, ``delay`` is how long to stay silent; ``delay <= 0`` means until stop().
    """

    status: int = 200
    headers: Mapping[str, HeaderValue] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0
    action: str = "respond"
    trickle_interval: float = 0.5

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}; expected one of {sorted(ACTIONS)}")


@dataclass
class Record:
    """One received request. ``status`` is 0 for reset/hang (and while still in flight)."""

    t: float
    method: str
    path: str
    headers: Headers
    body: bytes = b""
    status: int = 0
    thread_id: int = 0
    client_port: int = 0
    rate_limited: bool = False


_DEFAULT_STEP = Step()


def _route(path: str) -> str:
    return path.split("?", 1)[0]


def _matches(record_path: str, path: str | None) -> bool:
    if path is None:
        return True
    # A filter with a query string must match exactly; otherwise ignore the query.
    return record_path == path if "?" in path else _route(record_path) == path


def _evaluate(headers: Mapping[str, HeaderValue]) -> dict[str, str]:
    return {name: value() if callable(value) else value for name, value in headers.items()}


class _Core(FakeServer):
    """The shared fake API server, answering from its owner's scripts."""

    def __init__(self, owner: ScriptedServer) -> None:
        super().__init__(FakeConfig())
        self.owner = owner

    def respond(self, handler: FakeHandler) -> None:
        self.owner._serve(handler)

    def command(self, name: str, *args: Any) -> Any:
        """Commands from :class:`ServerProcess`, run on the owner in the server's process."""
        owner = self.owner
        if name == "script":
            return owner.script(*args)
        if name == "limit":
            return owner.limit(*args)
        if name == "reset":
            return owner.reset()
        if name == "records":
            return owner.records
        return super().command(name, *args)


class ScriptedServer:
    """Threaded HTTP/1.1 server on 127.0.0.1 with per-path scripts, rate limits and recording."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._httpd: _Core | None = None
        self._records: list[Record] = []
        self._scripts: dict[str, tuple[Step, ...]] = {}
        self._cursor: dict[str, int] = {}
        self._limits: list[tuple[int, float]] = []
        self._retry_after: HeaderValue = "1"
        self._count_rejected = False
        self._key: Callable[[Record], Hashable] | None = None
        self._windows: dict[Hashable, list[Meter]] = {}
        self._in_flight = 0
        self._peak = 0

    # -- lifecycle -----------------------------------------------------------------------

    def start(self: _S) -> _S:
        """Bind a free port and serve in a background daemon thread."""
        if self._httpd is not None:
            raise RuntimeError("server already started")
        self._httpd = _Core(self).start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop serving, cut open (keep-alive) connections and close everything. Idempotent."""
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.stop(timeout)

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return self._httpd.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_for(self, path: str) -> str:
        return self.url + (path if path.startswith("/") else "/" + path)

    # -- configuration -------------------------------------------------------------------

    def script(self, path: str, *steps: Step) -> None:
        """Answer successive requests to ``path`` (query ignored) with ``steps``.

        The last step repeats once the others are used up; no steps removes the script.
        """
        for step in steps:
            if not isinstance(step, Step):
                raise TypeError(f"expected Step, got {type(step).__name__}")
        with self._lock:
            self._cursor.pop(path, None)
            if steps:
                self._scripts[path] = steps
            else:
                self._scripts.pop(path, None)

    def limit(
        self,
        limits: Iterable[tuple[int, float]] | None,
        retry_after: float | str | Callable[[], str] = 1,
        count_rejected: bool = False,
        key: Callable[[Record], Hashable] | None = None,
    ) -> None:
        """Enforce sliding-window limits, ``[(count, seconds), ...]``, over all paths.

        A request is admitted iff, for every pair, fewer than ``count`` admitted arrivals
        lie in ``(now - seconds, now]``; otherwise it gets 429 + ``Retry-After`` and, unless
        ``count_rejected``, is not entered in the window. ``key(record)`` splits the one
        server-wide bucket into one per key. ``None``/``[]`` removes the limits.
        """
        parsed = [(int(c), float(s)) for c, s in (limits or ())]
        if any(c < 1 or s <= 0 for c, s in parsed):
            raise ValueError("limits need count >= 1 and seconds > 0")
        with self._lock:
            self._limits = parsed
            self._retry_after = retry_after if callable(retry_after) else str(retry_after)
            self._count_rejected = count_rejected
            self._key = key
            self._windows = {}

    def reset(self) -> None:
        """Forget records, scripts, limits and the in-flight peak."""
        with self._lock:
            self._records = []
            self._scripts = {}
            self._cursor = {}
            self._limits = []
            self._windows = {}
            self._key = None
            self._peak = self._in_flight

    # -- inspection ----------------------------------------------------------------------

    @property
    def records(self) -> list[Record]:
        with self._lock:
            return list(self._records)

    def count(self, path: str | None = None, status: int | None = None) -> int:
        """Requests seen, optionally only for ``path`` (query ignored unless given) and status."""
        return sum(
            1
            for r in self.records
            if _matches(r.path, path) and (status is None or r.status == status)
        )

    def statuses(self, path: str | None = None) -> list[int]:
        return [r.status for r in self.records if _matches(r.path, path)]

    def times(self, path: str | None = None) -> list[float]:
        return [r.t for r in self.records if _matches(r.path, path)]

    def max_in_window(self, seconds: float, path: str | None = None) -> int:
        """Most admitted (not rate-limited) arrivals in any window ``(t - seconds, t]``."""
        times = [r.t for r in self.records if not r.rate_limited and _matches(r.path, path)]
        best = 0
        for j, t in enumerate(times):
            best = max(best, j + 1 - bisect.bisect_right(times, t - seconds, 0, j))
        return best

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    @property
    def peak_in_flight(self) -> int:
        with self._lock:
            return self._peak

    def wait_idle(self, timeout: float = 2.0) -> bool:
        """Block until no request is being handled; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._in_flight == 0, timeout)

    # -- handler hooks -------------------------------------------------------------------

    def _serve(self, handler: FakeHandler) -> None:
        record, step = self._arrive(handler)
        try:
            record.body = handler.read_body()
            if step is None:
                limited = {"Retry-After": self._retry_after}
                self._respond(handler, record, 429, limited, b"rate limited")
            else:
                self._play(handler, record, step)
        finally:
            self._depart()

    def _play(self, handler: FakeHandler, record: Record, step: Step) -> None:
        stopping = handler.server.stopping
        if step.action == "hang":
            stopping.wait(step.delay if step.delay > 0 else None)
            handler.close_write()
            return
        if step.delay > 0:
            stopping.wait(step.delay)
        if step.action == "respond":
            self._respond(handler, record, step.status, step.headers, step.body)
        elif step.action == "reset":
            handler.reset()
        elif step.action == "truncate":
            headers = _evaluate(step.headers)
            head = handler.head(step.status, headers, len(step.body) + 100, force=True)
            record.status = step.status
            handler.wfile.write(head if handler.command == "HEAD" else head + step.body)
            handler.close_write()
        elif step.action == "trickle":
            headers = _evaluate(step.headers)
            head = handler.head(step.status, headers, len(step.body), force=True)
            record.status = step.status
            handler.wfile.write(head)
            if handler.command == "HEAD":
                return
            for i in range(len(step.body)):
                if i and stopping.wait(step.trickle_interval):
                    handler.close_write()
                    return
                handler.wfile.write(step.body[i : i + 1])

    def _respond(
        self,
        handler: FakeHandler,
        record: Record,
        status: int,
        headers: Mapping[str, HeaderValue],
        body: bytes,
    ) -> None:
        record.status = status
        handler.send(status, _evaluate(headers), body)

    def _arrive(self, handler: FakeHandler) -> tuple[Record, Step | None]:
        """Stamp, rate-check, record and pick the step for a request, atomically.

        The clock is read under the lock so arrival times are recorded (and checked by the
        limiter) in strictly non-decreasing order.
        """
        record = Record(
            t=0.0,
            method=handler.command,
            path=handler.path,
            headers=Headers(handler.headers.items()),
            thread_id=threading.get_ident(),
            client_port=handler.client_address[1],
        )
        with self._lock:
            now = record.t = time.monotonic()
            step: Step | None = None
            if self._limits and not self._admit(record, now):
                record.rate_limited = True
            else:
                route = _route(record.path)
                steps = self._scripts.get(route)
                if steps:
                    i = self._cursor.get(route, 0)
                    self._cursor[route] = i + 1
                    step = steps[min(i, len(steps) - 1)]
                else:
                    step = _DEFAULT_STEP
            self._records.append(record)
            self._in_flight += 1
            self._peak = max(self._peak, self._in_flight)
        return record, step

    def _admit(self, record: Record, now: float) -> bool:
        key = self._key(record) if self._key else None
        meters = self._windows.get(key)
        if meters is None:
            meters = self._windows[key] = [Meter(Window(c, s), now) for c, s in self._limits]
        admitted = all(meter.wait(now, 1) == 0.0 for meter in meters)
        if admitted or self._count_rejected:
            for meter in meters:
                meter.take(now, 1)
        return admitted

    def _depart(self) -> None:
        with self._changed:
            self._in_flight -= 1
            self._changed.notify_all()


# -- the same server in a process of its own ------------------------------------------


def _scripted_core() -> _Core:
    """Builds the server in the :class:`ServerProcess`'s child."""
    owner = ScriptedServer()
    core = owner._httpd = _Core(owner)
    return core


class ServerProcess(ScriptedServer):
    """A :class:`ScriptedServer` in a process of its own (``syncfetch.testing``'s ``ServerChild``).

    A server in the test process stamps each arrival when its handler thread gets the
    GIL, which the client threads hold: late by a delay no client can see, so a strict
    limit test there can fail on a correct client. This one has its own GIL. Same
    configuration and inspection methods (steps are sent as data: header values must be
    strings); ``in_flight`` and ``wait_idle`` are not available.
    """

    def __init__(self) -> None:
        super().__init__()
        self._child: ServerChild | None = None
        self._port = 0

    def start(self: _S) -> _S:
        assert isinstance(self, ServerProcess)
        if self._child is not None:
            raise RuntimeError("server already started")
        child = ServerChild(_scripted_core)
        self._port = child.start()
        self._child = child
        return self

    def stop(self, timeout: float = 2.0) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.stop()

    @property
    def port(self) -> int:
        if self._child is None:
            raise RuntimeError("server not started")
        return self._port

    def _call(self, name: str, *args: Any) -> Any:
        if self._child is None:
            raise RuntimeError("server not started")
        try:
            return self._child.call(name, *args)
        except TypeError as exc:
            raise ValueError(str(exc)) from None

    def script(self, path: str, *steps: Step) -> None:
        for step in steps:
            if not isinstance(step, Step):
                raise TypeError(f"expected Step, got {type(step).__name__}")
            if any(callable(v) for v in step.headers.values()):
                raise TypeError("a server process takes string header values only")
        self._call("script", path, *steps)

    def limit(
        self,
        limits: Iterable[tuple[int, float]] | None,
        retry_after: float | str | Callable[[], str] = 1,
        count_rejected: bool = False,
        key: Callable[[Record], Hashable] | None = None,
    ) -> None:
        if callable(retry_after) or key is not None:
            raise TypeError("a server process takes no callables")
        pairs = [(count, seconds) for count, seconds in limits or ()]
        self._call("limit", pairs, str(retry_after), count_rejected)

    def reset(self) -> None:
        self._call("reset")

    @property
    def records(self) -> list[Record]:
        records: list[Record] = self._call("records")
        return records

    @property
    def in_flight(self) -> int:
        raise NotImplementedError("not available for a server process")

    @property
    def peak_in_flight(self) -> int:
        raise NotImplementedError("not available for a server process")

    def wait_idle(self, timeout: float = 2.0) -> bool:
        raise NotImplementedError("not available for a server process")

"""A scripted, real HTTP/1.1 server for the syncfetch test suite (standard library only).

Typical use::

    server.script("/flaky", Step(status=503), Step(status=503), Step())
    server.limit([(10, 1.0)], retry_after=1)
    ...
    assert server.statuses("/flaky") == [503, 503, 200]
    assert server.max_in_window(1.0) <= 10
"""

from __future__ import annotations

import bisect
import contextlib
import email.utils
import json
import os
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, TypeVar

__all__ = ["Headers", "Record", "ScriptedServer", "ServerProcess", "Step", "http_date"]

HeaderValue = str | Callable[[], str]
_S = TypeVar("_S", bound="ScriptedServer")
ACTIONS = frozenset({"respond", "reset", "truncate", "trickle", "hang"})

# Errors a client can legitimately cause by going away mid-exchange.
_CLIENT_GONE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, TimeoutError)


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
_NO_BODY_STATUSES = frozenset({204, 304})


def _route(path: str) -> str:
    return path.split("?", 1)[0]


def _matches(record_path: str, path: str | None) -> bool:
    if path is None:
        return True
    # A filter with a query string must match exactly; otherwise ignore the query.
    return record_path == path if "?" in path else _route(record_path) == path


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(self, owner: ScriptedServer) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can stall.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "127.0.0.1"
        self.server_port = self.server_address[1]

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.owner._track(sock)
        return sock, addr

    def shutdown_request(self, request: Any) -> None:
        try:
            super().shutdown_request(request)
        finally:
            self.owner._untrack(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, _CLIENT_GONE):
            return
        if self.owner._stopping.is_set() and isinstance(exc, (OSError, ValueError)):
            return  # stop() shut the socket under a busy handler
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        # Serve every method, including ones BaseHTTPRequestHandler has never heard of.
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def _serve(self) -> None:
        owner = self.server.owner
        record, step = owner._arrive(self)
        try:
            record.body = self._read_body()
            if step is None:
                self._respond(record, 429, {"Retry-After": owner._retry_after}, b"rate limited")
            else:
                self._play(record, step)
        finally:
            owner._depart()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        try:
            n = int(length)
        except ValueError:
            self.close_connection = True
            return b""
        return self.rfile.read(n) if n > 0 else b""

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            line = self.rfile.readline(65537)
            if not line:
                self.close_connection = True
                return b"".join(parts)
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                break
            parts.append(self.rfile.read(size))
            self.rfile.readline(65537)  # CRLF after the chunk data
        while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
            pass  # trailer fields are ignored
        return b"".join(parts)

    def _play(self, record: Record, step: Step) -> None:
        stopping = self.server.owner._stopping
        if step.action == "hang":
            stopping.wait(step.delay if step.delay > 0 else None)
            self._close_write()
            return
        if step.delay > 0:
            stopping.wait(step.delay)
        if step.action == "respond":
            self._respond(record, step.status, step.headers, step.body)
        elif step.action == "reset":
            self._reset()
        elif step.action == "truncate":
            head = self._head(step.status, step.headers, len(step.body) + 100, force_length=True)
            record.status = step.status
            self.wfile.write(head if self.command == "HEAD" else head + step.body)
            self._close_write()
        elif step.action == "trickle":
            head = self._head(step.status, step.headers, len(step.body), force_length=True)
            record.status = step.status
            self.wfile.write(head)
            if self.command == "HEAD":
                return
            for i in range(len(step.body)):
                if i and stopping.wait(step.trickle_interval):
                    self._close_write()
                    return
                self.wfile.write(step.body[i : i + 1])

    def _respond(
        self, record: Record, status: int, headers: Mapping[str, HeaderValue], body: bytes
    ) -> None:
        if status in _NO_BODY_STATUSES or status < 200:
            body = b""
            head = self._head(status, headers, None)
        else:
            head = self._head(status, headers, len(body))
        record.status = status
        # One write per response: with TCP_NODELAY, head and body would otherwise go out
        # as separate segments.
        self.wfile.write(head if self.command == "HEAD" else head + body)

    def _head(
        self,
        status: int,
        headers: Mapping[str, HeaderValue],
        length: int | None,
        force_length: bool = False,
    ) -> bytes:
        reason = self.responses.get(status, ("",))[0]
        lines = [f"{self.protocol_version} {status} {reason}"]
        has_length = False
        for name, value in headers.items():
            lname = name.lower()
            if lname == "content-length":
                if force_length:
                    continue
                has_length = True
            text = value() if callable(value) else value
            if lname == "connection" and text.lower() == "close":
                self.close_connection = True
            lines.append(f"{name}: {text}")
        if length is not None and not has_length:
            lines.append(f"Content-Length: {length}")
        if self.close_connection and not any(n.lower() == "connection" for n in headers):
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _close_write(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)

    def _reset(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # rfile holds a makefile() reference; the fd (and the RST) only goes once it is closed.
        self.rfile.close()
        self.connection.close()


class ScriptedServer:
    """Threaded HTTP/1.1 server on 127.0.0.1 with per-path scripts, rate limits and recording."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._records: list[Record] = []
        self._scripts: dict[str, tuple[Step, ...]] = {}
        self._cursor: dict[str, int] = {}
        self._limits: list[tuple[int, float]] = []
        self._retry_after: HeaderValue = "1"
        self._count_rejected = False
        self._key: Callable[[Record], Hashable] | None = None
        self._windows: dict[Hashable, list[float]] = {}
        self._in_flight = 0
        self._peak = 0

    # -- lifecycle -----------------------------------------------------------------------

    def start(self: _S) -> _S:
        """Bind a free port and serve in a background daemon thread."""
        if self._httpd is not None:
            raise RuntimeError("server already started")
        self._stopping.clear()
        self._httpd = _HTTPServer(self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"ScriptedServer:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop serving, cut open (keep-alive) connections and close everything. Idempotent."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        with self._lock:
            conns = list(self._conns)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        httpd.server_close()
        if thread is not None:
            thread.join(timeout)
        with self._changed:
            self._changed.wait_for(lambda: not self._conns, timeout)
        self._httpd = self._thread = None

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
        return int(self._httpd.server_address[1])

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

    def _arrive(self, handler: _Handler) -> tuple[Record, Step | None]:
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
        window = self._windows.setdefault(self._key(record) if self._key else None, [])
        horizon = max(s for _, s in self._limits)
        del window[: bisect.bisect_right(window, now - horizon)]
        admitted = all(
            len(window) - bisect.bisect_right(window, now - seconds) < count
            for count, seconds in self._limits
        )
        if admitted or self._count_rejected:
            window.append(now)
        return admitted

    def _depart(self) -> None:
        with self._changed:
            self._in_flight -= 1
            self._changed.notify_all()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.add(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._changed:
            self._conns.discard(sock)
            self._changed.notify_all()


# -- the same server in a process of its own ------------------------------------------


class ServerProcess(ScriptedServer):
    """A :class:`ScriptedServer` run by ``python -m tests._server`` in its own process.

    A server in the test process stamps each arrival when its handler thread gets the
    GIL, which the client threads hold: late by a delay no client can see, so a strict
    limit test there can fail on a correct client. This one has its own GIL. Same
    configuration and inspection methods (steps are sent as data: header values must be
    strings); ``in_flight`` and ``wait_idle`` are not available.
    """

    def __init__(self) -> None:
        super().__init__()
        self._proc: subprocess.Popen[str] | None = None
        self._port = 0
        self._pipe_lock = threading.Lock()

    def start(self: _S) -> _S:
        assert isinstance(self, ServerProcess)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests._server"],
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._port = int(self._call({"op": "port"})["port"])
        return self

    def stop(self, timeout: float = 2.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None and proc.stdout is not None
        with contextlib.suppress(OSError):
            proc.stdin.close()  # EOF: the child stops serving and exits
        try:
            proc.wait(timeout + 3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()

    @property
    def port(self) -> int:
        if self._proc is None:
            raise RuntimeError("server not started")
        return self._port

    def _call(self, message: dict[str, Any]) -> dict[str, Any]:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise RuntimeError("server not started")
        with self._pipe_lock:
            proc.stdin.write(json.dumps(message) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the server process ended")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise ValueError(reply["error"])
        return reply

    def script(self, path: str, *steps: Step) -> None:
        for step in steps:
            if not isinstance(step, Step):
                raise TypeError(f"expected Step, got {type(step).__name__}")
            if any(callable(v) for v in step.headers.values()):
                raise TypeError("a server process takes string header values only")
        self._call({"op": "script", "path": path, "steps": [_step_data(s) for s in steps]})

    def limit(
        self,
        limits: Iterable[tuple[int, float]] | None,
        retry_after: float | str | Callable[[], str] = 1,
        count_rejected: bool = False,
        key: Callable[[Record], Hashable] | None = None,
    ) -> None:
        if callable(retry_after) or key is not None:
            raise TypeError("a server process takes no callables")
        self._call(
            {
                "op": "limit",
                "limits": [list(pair) for pair in limits or ()],
                "retry_after": str(retry_after),
                "count_rejected": count_rejected,
            }
        )

    def reset(self) -> None:
        self._call({"op": "reset"})

    @property
    def records(self) -> list[Record]:
        return [
            Record(
                t=r["t"],
                method=r["method"],
                path=r["path"],
                headers=Headers(r["headers"]),
                body=r["body"].encode("latin-1"),
                status=r["status"],
                thread_id=r["thread_id"],
                client_port=r["client_port"],
                rate_limited=r["rate_limited"],
            )
            for r in self._call({"op": "records"})["records"]
        ]

    @property
    def in_flight(self) -> int:
        raise NotImplementedError("not available for a server process")

    @property
    def peak_in_flight(self) -> int:
        raise NotImplementedError("not available for a server process")

    def wait_idle(self, timeout: float = 2.0) -> bool:
        raise NotImplementedError("not available for a server process")


def _step_data(step: Step) -> dict[str, Any]:
    return {
        "status": step.status,
        "headers": dict(step.headers),
        "body": step.body.decode("latin-1"),
        "delay": step.delay,
        "action": step.action,
        "trickle_interval": step.trickle_interval,
    }


def _serve_commands(server: ScriptedServer) -> None:
    """The server process's side of :class:`ServerProcess`: one JSON command a line."""
    for line in sys.stdin:
        message = json.loads(line)
        op = message.pop("op")
        reply: dict[str, Any] = {}
        try:
            if op == "port":
                reply["port"] = server.port
            elif op == "script":
                steps = [
                    Step(**{**d, "body": d["body"].encode("latin-1")}) for d in message["steps"]
                ]
                server.script(message["path"], *steps)
            elif op == "limit":
                server.limit(
                    [tuple(pair) for pair in message["limits"]],
                    message["retry_after"],
                    message["count_rejected"],
                )
            elif op == "reset":
                server.reset()
            elif op == "records":
                reply["records"] = [
                    {
                        "t": r.t,
                        "method": r.method,
                        "path": r.path,
                        "headers": list(r.headers.items()),
                        "body": r.body.decode("latin-1"),
                        "status": r.status,
                        "thread_id": r.thread_id,
                        "client_port": r.client_port,
                        "rate_limited": r.rate_limited,
                    }
                    for r in server.records
                ]
            else:
                reply["error"] = f"unknown op {op!r}"
        except (TypeError, ValueError) as exc:
            reply["error"] = str(exc)
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    with ScriptedServer() as _server:
        _serve_commands(_server)

"""Loopback HTTP/1.1 servers for the benchmarks, each in its own process.

The server runs in a child process started with the ``spawn`` context, so it never competes
with the client for the client's GIL: what a benchmark measures is the client. It keeps
connections alive, disables Nagle, answers ``200 ok`` with a Content-Length, and can enforce a
strict sliding-window limit: a request is admitted if fewer than ``count`` admitted arrivals fall
in ``(now - seconds, now]`` for every ``(count, seconds)``; otherwise it gets ``429`` with
``Retry-After: 1`` and is not counted. ``slack`` shortens every window by that many seconds
(the stamping delay a server tolerates); ``latency`` delays every answer after its arrival is
stamped. At the end the child sends its counts back on a queue.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import multiprocessing
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from types import TracebackType
from typing import Any

Limits = list[tuple[int, float]]

# Pre-built answers: one write each, so a response is one segment on the wire.
_OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
_BUSY = (
    b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 17\r\n\r\ntoo many requests"
)
# A server outlives no benchmark: it stops by itself after this long, or when its parent dies.
_MAX_LIFE = 600.0


@dataclasses.dataclass(frozen=True)
class Counts:
    """What the server saw: requests answered 200, and requests refused with 429."""

    admitted: int
    rejected: int
    strict_over: int = 0  # admitted only thanks to the slack


class _Window:
    """Exact sliding-window admission; arrivals are checked and recorded under one lock."""

    def __init__(self, limits: Limits, slack: float = 0.0) -> None:
        self._logs = [(count, seconds, collections.deque[float]()) for count, seconds in limits]
        self._slack = slack
        self._lock = threading.Lock()
        self.admitted = 0
        self.rejected = 0
        # Admitted arrivals that a window without the slack would have refused.
        self.strict_over = 0

    def admit(self, now: float) -> bool:
        with self._lock:
            over = False
            for count, seconds, log in self._logs:
                while log and log[0] <= now - seconds:
                    log.popleft()
                # Arrivals within the slack of leaving the window no longer count.
                kept = len(log) - bisect.bisect_right(log, now - seconds + self._slack)
                if kept >= count:
                    self.rejected += 1
                    return False
                over = over or len(log) >= count
            for _, _, log in self._logs:
                log.append(now)
            self.admitted += 1
            self.strict_over += over
            return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256

    def __init__(self, limits: Limits, slack: float, latency: float) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.window = _Window(limits, slack)
        self.latency = latency


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        # The request line and headers are parsed by now: this is its arrival time.
        now = time.monotonic()
        admitted = self.server.window.admit(now)
        if self.server.latency:
            time.sleep(self.server.latency)
        self.wfile.write(_OK if admitted else _BUSY)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _serve(
    limits: Limits, slack: float, latency: float, queue: Queue[Any], stop: Event, parent: int
) -> None:
    """Child process body: serve until told to stop (or orphaned), then report the counts."""
    server = _Server(limits, slack, latency)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    queue.put(server.server_address[1])
    end = time.monotonic() + _MAX_LIFE
    while not stop.wait(0.25):
        if os.getppid() != parent or time.monotonic() > end:
            break
    server.shutdown()
    window = server.window
    with window._lock:
        queue.put(Counts(window.admitted, window.rejected, window.strict_over))
    server.server_close()


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
        ctx = multiprocessing.get_context("spawn")
        self._queue: Queue[Any] = ctx.Queue()
        self._stop: Event = ctx.Event()
        self._proc = ctx.Process(
            target=_serve,
            args=(list(limits or []), slack, latency, self._queue, self._stop, os.getpid()),
            daemon=True,
            name="bench-server",
        )
        self.url = ""
        self.counts: Counts | None = None

    def __enter__(self) -> ServerProcess:
        self._proc.start()
        port = self._queue.get(timeout=30)
        self.url = f"http://127.0.0.1:{port}/"
        return self

    def stop(self) -> Counts:
        if self.counts is None:
            self._stop.set()
            self.counts = self._queue.get(timeout=30)
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(5)
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
                # Do not wait on a queue while an error is already on its way up.
                self._proc.terminate()
                self._proc.join(5)

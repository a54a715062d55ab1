"""The fake provider's HTTP server: admission, faults, each provider's headers, the record.

The one local HTTP server of the project: ``FakeAPI`` (users' tests, the recipes), the
demo's provider (``syncfetch._provider``), the benchmarks, the examples' upstream and the
test suite's scripted server (``tests/_server.py``, a subclass) are all a :class:`FakeServer`.
Loopback only, no reverse DNS, a deep backlog, keep-alive connections cut on :meth:`stop`,
every request method served, and a process of its own through :class:`ServerChild`.
Standard library only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import json
import random
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple, TypeVar

from ._answers import _Decision, answer
from ._meters import Meter, Window

_F = TypeVar("_F", bound="FakeServer")

#: Header dialects the fake provider speaks.
DIALECTS = (
    "plain",
    "ietf",
    "github",
    "stripe",
    "shopify",
    "openai",
    "discord",
    "salesforce",
    "binance",
)
#: Status recorded for a request answered with a TCP reset.
RESET = 0
# An admitted request processed in full whose answer is lost (the connection is reset).
_LOST = -1
_REASONS = {
    200: "OK",
    403: "Forbidden",
    418: "I'm a teapot",
    429: "Too Many Requests",
    503: "Service Unavailable",
}


@dataclasses.dataclass(frozen=True)
class FakeConfig:
    """Everything the server needs; picklable, for the child process."""

    windows: tuple[Window, ...] = ()
    costs: tuple[tuple[str, int], ...] = ()
    fail_rate: float = 0.0
    reset_rate: float = 0.0
    lost_rate: float = 0.0
    latency: float = 0.0
    retry_after: bool = True
    dialect: str = "plain"
    ban_after: int | None = None
    ban_seconds: float = 120.0
    seed: int = 0
    port: int = 0
    slack: float = 0.0


class Arrival(NamedTuple):
    """One request the fake provider received.

    :ivar at: ``time.monotonic()`` at its arrival (comparable across processes on Linux).
    :ivar method: the request method.
    :ivar path: the path, query string included.
    :ivar status: the status answered; ``0`` for a connection reset.
    :ivar cost: what the request weighed in cost windows.
    :ivar headers: the request's headers, lower-cased names.
    """

    at: float
    method: str
    path: str
    status: int
    cost: int
    headers: Mapping[str, str]


# Errors a client can legitimately cause by going away mid-exchange.
_CLIENT_GONE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, TimeoutError)


class FakeServer(ThreadingHTTPServer):
    """The fake provider served from this process (``FakeAPI`` runs it in a child).

    Subclasses change what a request gets by overriding :meth:`respond` (the whole
    exchange) or :meth:`reply` (the answer to an admitted or refused request).
    """

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    # 50 client threads connect at once: the default backlog of 5 would drop SYNs.
    request_queue_size = 1024

    def __init__(self, config: FakeConfig) -> None:
        super().__init__(("127.0.0.1", config.port), FakeHandler)
        self.fake = config
        self.started = time.monotonic()
        #: Set by :meth:`stop`: handlers waiting on it (a hang, a trickle) give up.
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # _lock guards the meters, counters, idempotency keys, records and open connections.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._conns: set[socket.socket] = set()
        self._meters = [Meter(w, self.started, config.slack) for w in config.windows]
        self._admitted: dict[str, int] = {}
        self._refused_in_a_row = 0
        self._banned_until = 0.0
        self._idempotent: dict[str, int] = {}
        self._resources = 0
        self._arrivals: list[Arrival] = []

    # -- the socket server ----------------------------------------------------------------

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can stall.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "127.0.0.1"
        self.server_port = self.server_address[1]

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.server_address[1])

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        with self._lock:
            self._conns.add(sock)
        return sock, addr

    def shutdown_request(self, request: Any) -> None:
        try:
            super().shutdown_request(request)
        finally:
            with self._changed:
                self._conns.discard(request)
                self._changed.notify_all()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, _CLIENT_GONE):
            return
        if self.stopping.is_set() and isinstance(exc, (OSError, ValueError)):
            return  # stop() shut the socket under a busy handler
        super().handle_error(request, client_address)

    def start(self: _F) -> _F:
        """Serve from a daemon thread of this process."""
        self._thread = threading.Thread(
            target=self.serve_forever, args=(0.05,), daemon=True, name=f"fake-api:{self.port}"
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop serving, cut open (keep-alive) connections and close the socket."""
        self.stopping.set()
        if self._thread is not None:
            self.shutdown()
        with self._lock:
            conns = list(self._conns)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._changed:
            self._changed.wait_for(lambda: not self._conns, timeout)

    def command(self, name: str, *args: Any) -> Any:
        """A command from the parent of a :class:`ServerChild`."""
        if name == "arrivals":
            return self.arrivals()
        if name == "clear":
            return self.clear()
        raise ValueError(f"unknown command {name!r}")

    # -- one request ----------------------------------------------------------------------

    def respond(self, handler: FakeHandler) -> None:
        """Serve one request: judge it, wait the latency, answer (or reset the connection)."""
        # Headers are parsed by now: this is the request's arrival.
        now = time.monotonic()
        handler.read_body(1 << 20)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        decision = self.judge(handler.command, handler.path, headers, now)
        if self.fake.latency > 0:
            time.sleep(self.fake.latency)
        if decision.status == RESET:
            handler.reset()
            return
        status, extra, body = self.reply(handler.command, handler.path, decision)
        data = json.dumps(body).encode()
        extra = {"Content-Type": "application/json", **extra}
        extra["Date"] = email.utils.formatdate(usegmt=True)
        handler.send(status, extra, data)

    def reply(self, method: str, path: str, decision: _Decision) -> tuple[int, dict[str, str], Any]:
        """Status, headers and JSON body for a judged request (the dialect's, by default)."""
        return decision.reply

    def cost_of(self, path: str) -> int:
        """The cost of a request to ``path``: the longest matching prefix's, else 1."""
        best, cost = -1, 1
        for prefix, value in self.fake.costs:
            if path.startswith(prefix) and len(prefix) > best:
                best, cost = len(prefix), value
        return cost

    def judge(self, method: str, path: str, headers: Mapping[str, str], now: float) -> _Decision:
        """Admit or refuse one request, draw its fault, and record it (atomically)."""
        cfg = self.fake
        cost = self.cost_of(path)
        with self._lock:
            meters = [
                m for m in self._meters if m.window.route is None or path.startswith(m.window.route)
            ]
            amounts = [cost if m.window.unit == "cost" else 1 for m in meters]
            refused_by: Window | None = None
            wait = 0.0
            if now < self._banned_until:
                status, wait = 418, self._banned_until - now
            else:
                for meter, amount in zip(meters, amounts, strict=True):
                    w = meter.wait(now, amount)
                    if w > wait:
                        wait, refused_by = w, meter.window
                if refused_by is not None:
                    status = 429
                    self._refused_in_a_row += 1
                    if cfg.ban_after is not None and self._refused_in_a_row > cfg.ban_after:
                        self._banned_until = now + cfg.ban_seconds
                        self._refused_in_a_row = 0
                        status, wait = 418, cfg.ban_seconds
                else:
                    self._refused_in_a_row = 0
                    for meter, amount in zip(meters, amounts, strict=True):
                        meter.take(now, amount)
                    status = self._draw(path)
            decision = _Decision(status, wait, cost, refused_by, [])
            decision.state = [(m.window, m.remaining(now), m.reset_in(now)) for m in meters]
            processed = status in (200, _LOST)
            key = headers.get("idempotency-key")
            if processed and method == "POST" and key:
                decision.replayed = key in self._idempotent
                if not decision.replayed:
                    self._resources += 1
                    self._idempotent[key] = self._resources
                decision.resource = self._idempotent[key]
            elif processed:
                self._resources += 1
                decision.resource = self._resources
            if status == _LOST:
                status = decision.status = RESET
            if status != RESET:
                decision.reply = answer(cfg.dialect, decision, cfg.retry_after)
                status = decision.reply[0]  # recorded as sent: GitHub's 403, Shopify's 200
            self._arrivals.append(Arrival(now, method, path, status, cost, dict(headers)))
        return decision

    def _draw(self, path: str) -> int:
        """The fault for the n-th admitted request to ``path``: the demo provider's draw."""
        cfg = self.fake
        nth = self._admitted.get(path, 0)
        self._admitted[path] = nth + 1
        draw = random.Random(f"{cfg.seed}:{path}:{nth}").random()
        if draw < cfg.reset_rate:
            return RESET
        if draw < cfg.reset_rate + cfg.fail_rate:
            return 503
        if draw < cfg.reset_rate + cfg.fail_rate + cfg.lost_rate:
            return _LOST
        return 200

    def arrivals(self) -> list[Arrival]:
        """Every arrival so far, in arrival order."""
        with self._lock:
            return list(self._arrivals)

    def clear(self) -> None:
        """Forget the arrivals recorded so far (the windows keep their state)."""
        with self._lock:
            self._arrivals.clear()


class FakeHandler(BaseHTTPRequestHandler):
    """Hands every request, whatever its method, to ``server.respond``; helpers to answer."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: FakeServer

    def __getattr__(self, name: str) -> Any:
        # Serve every method, including ones BaseHTTPRequestHandler has never heard of.
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def _serve(self) -> None:
        self.server.respond(self)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def read_body(self, limit: int | None = None) -> bytes:
        """The request body (``Content-Length`` or chunked), at most ``limit`` bytes read."""
        with contextlib.suppress(ValueError, OSError):
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return self._read_chunked()
            length = self.headers.get("Content-Length", "")
            if not length:
                return b""
            if not (length.isascii() and length.isdigit()):
                self.close_connection = True
                return b""
            n = int(length) if limit is None else min(int(length), limit)
            return self.rfile.read(n) if n > 0 else b""
        self.close_connection = True
        return b""

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

    def head(
        self, status: int, headers: Mapping[str, str], length: int | None, force: bool = False
    ) -> bytes:
        """A status line and header block; ``Content-Length: length`` unless given (or
        ``force``: always ``length``); ``Connection: close`` if the connection closes."""
        reason = _REASONS.get(status) or self.responses.get(status, ("",))[0]
        lines = [f"{self.protocol_version} {status} {reason}"]
        has_length = False
        for name, value in headers.items():
            lname = name.lower()
            if lname == "content-length":
                if force:
                    continue
                has_length = True
            if lname == "connection" and value.lower() == "close":
                self.close_connection = True
            lines.append(f"{name}: {value}")
        if length is not None and not has_length:
            lines.append(f"Content-Length: {length}")
        if self.close_connection and not any(n.lower() == "connection" for n in headers):
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def send(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        """Answer in one write (one segment on the wire); no body for HEAD, 1xx, 204, 304."""
        if status in (204, 304) or status < 200:
            body, length = b"", None
        else:
            length = len(body)
        data = self.head(status, headers, length)
        with contextlib.suppress(OSError):
            self.wfile.write(data if self.command == "HEAD" else data + body)

    def close_write(self) -> None:
        """Half-close: the client reads the end of the stream."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)

    def reset(self) -> None:
        """Close the connection with a TCP reset."""
        self.close_connection = True
        # Linger 0 makes close() send RST instead of FIN; closing here (before the server's
        # shutdown(SHUT_WR), which would send a FIN) makes it a real reset.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # rfile holds a makefile() reference; the fd (and the RST) only goes once it is closed.
        self.rfile.close()
        self.connection.close()

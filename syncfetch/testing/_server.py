"""The fake provider's HTTP server: admission, faults, each provider's headers, the record.

Built on the demo's strict provider (``syncfetch._provider.ProviderServer``: loopback only,
no reverse DNS, a deep backlog, the same seeded fault draws) with windows of any kind, per
route and per cost, and the header dialects of real providers. Standard library only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import hashlib
import json
import math
import os
import random
import signal
import socket
import struct
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from .._provider import RESET, ProviderConfig, ProviderServer
from ._meters import Meter, Window

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
# An admitted request processed in full whose answer is lost (the connection is reset).
_LOST = -1
# A fake provider outlives no test run: it stops by itself after this long, or when its
# parent dies.
MAX_LIFE = 3600.0
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


@dataclasses.dataclass
class _Decision:
    status: int
    wait: float
    cost: int
    refused_by: Window | None
    state: list[tuple[Window, float, float]]  # (window, remaining, reset_in) that apply
    replayed: bool = False
    resource: int = 0
    reply: tuple[int, dict[str, str], Any] = (0, {}, None)  # status, headers, body as sent


class FakeServer(ProviderServer):
    """The fake provider served from this process (``FakeAPI`` runs it in a child)."""

    def __init__(self, config: FakeConfig) -> None:
        base = ProviderConfig(
            rate=0,
            per_minute=0,
            fail_rate=config.fail_rate,
            reset_rate=config.reset_rate,
            latency=config.latency,
            seed=config.seed,
            port=config.port,
        )
        super().__init__(base)
        self.RequestHandlerClass = _Handler
        self.fake = config
        self.started = time.monotonic()
        # _lock (the base's) guards the meters, counters, idempotency keys and records.
        self._meters = [Meter(w, self.started) for w in config.windows]
        self._admitted: dict[str, int] = {}
        self._refused_in_a_row = 0
        self._banned_until = 0.0
        self._idempotent: dict[str, int] = {}
        self._resources = 0
        self._arrivals: list[Arrival] = []

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


# -- each provider's answer ---------------------------------------------------------------------


def go_duration(seconds: float) -> str:
    """A duration as OpenAI writes it: ``12ms``, ``1s``, ``6m0s``, ``1h2m3.5s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{round(secs, 3):g}s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{text}"
    return f"{int(minutes)}m{text}" if minutes else text


def _interval(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{max(1, round(seconds))}s"


def _first(
    d: _Decision, unit: str, routed: bool | None = None
) -> tuple[Window, float, float] | None:
    for state in d.state:
        window = state[0]
        if window.unit == unit and (routed is None or (window.route is not None) == routed):
            return state
    return None


def answer(dialect: str, d: _Decision, retry_after: bool) -> tuple[int, dict[str, str], Any]:
    """Status, headers and JSON body for a decision, in ``dialect``."""
    status, headers = d.status, {}
    seconds = max(1, math.ceil(d.wait))
    body: Any = {"ok": True, "id": d.resource} if status == 200 else {"error": "unavailable"}
    if status in (429, 418):
        body = {"error": "rate limited", "retry_after": seconds}
        if retry_after:
            headers["Retry-After"] = str(seconds)
    if status == 503 and retry_after and d.wait:
        headers["Retry-After"] = str(seconds)
    now = time.time()
    if dialect == "ietf":
        state = _first(d, "requests") or _first(d, "cost")
        if state is not None:
            w, left, reset = state
            headers["RateLimit-Policy"] = f'"default";q={w.count};w={math.ceil(w.seconds)}'
            headers["RateLimit"] = f'"default";r={int(left)};t={math.ceil(reset)}'
    elif dialect == "github":
        primary = _first(d, "requests", routed=False)
        if primary is not None:
            w, left, reset = primary
            headers.update(
                {
                    "X-RateLimit-Limit": str(w.count),
                    "X-RateLimit-Remaining": str(int(left)),
                    "X-RateLimit-Used": str(w.count - int(left)),
                    "X-RateLimit-Reset": str(math.ceil(now + reset)),
                    "X-RateLimit-Resource": "core",
                }
            )
        if status == 429:
            status = 403  # GitHub throttles with 403 (primary: remaining 0; secondary: Retry-After)
            secondary = d.refused_by is not None and d.refused_by.route is not None
            headers.pop("Retry-After", None)
            if secondary:
                headers["Retry-After"] = str(seconds)
            kind = "a secondary rate limit" if secondary else "API rate limit exceeded"
            body = {"message": f"You have exceeded {kind}", "documentation_url": "fake"}
    elif dialect == "stripe":
        headers["Request-Id"] = f"req_{d.resource or 0}"
        if d.replayed:
            headers["Idempotent-Replayed"] = "true"
        if status == 200:
            body = {"id": f"ch_{d.resource}", "object": "charge"}
        if status == 429:
            headers.pop("Retry-After", None)  # Stripe sends none
            body = {"error": {"type": "rate_limit_error", "code": "rate_limit"}}
    elif dialect == "shopify":
        state = _first(d, "cost")
        if state is not None:
            w, left, _ = state
            cost = {
                "requestedQueryCost": d.cost,
                "actualQueryCost": d.cost if status == 200 else None,
                "throttleStatus": {
                    "maximumAvailable": float(w.count),
                    "currentlyAvailable": round(left, 1),
                    "restoreRate": round(w.count / w.seconds, 3),
                },
            }
            body = {"data": {"ok": True, "id": d.resource}, "extensions": {"cost": cost}}
            if status == 429:
                # GraphQL answers a throttle with 200 and an error in the body.
                status = 200
                headers.pop("Retry-After", None)
                body = {
                    "errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
                    "extensions": {"cost": cost},
                }
    elif dialect == "openai":
        for unit, kind in (("requests", "requests"), ("cost", "tokens")):
            state = _first(d, unit)
            if state is not None:
                w, left, reset = state
                headers[f"x-ratelimit-limit-{kind}"] = str(w.count)
                headers[f"x-ratelimit-remaining-{kind}"] = str(int(left))
                headers[f"x-ratelimit-reset-{kind}"] = go_duration(reset)
        if status == 429:
            headers.pop("Retry-After", None)
            kind = (
                "tokens" if d.refused_by is not None and d.refused_by.unit == "cost" else "requests"
            )
            body = {
                "error": {
                    "message": f"Rate limit reached for {kind}",
                    "type": kind,
                    "code": "rate_limit_exceeded",
                }
            }
    elif dialect == "discord":
        state = _first(d, "requests", routed=True) or _first(d, "requests")
        if state is not None:
            w, left, reset = state
            route = w.route or "global"
            headers.update(
                {
                    "X-RateLimit-Limit": str(w.count),
                    "X-RateLimit-Remaining": str(int(left)),
                    "X-RateLimit-Reset": f"{now + reset:.3f}",
                    "X-RateLimit-Reset-After": f"{reset:.3f}",
                    "X-RateLimit-Bucket": hashlib.sha1(route.encode()).hexdigest()[:16],
                }
            )
        if status == 429:
            is_global = d.refused_by is not None and d.refused_by.route is None
            headers["X-RateLimit-Scope"] = "global" if is_global else "user"
            if is_global:
                headers["X-RateLimit-Global"] = "true"
            body = {
                "message": "You are being rate limited.",
                "retry_after": round(d.wait, 3),
                "global": is_global,
            }
    elif dialect == "salesforce":
        state = _first(d, "requests", routed=False)
        if state is not None:
            w, left, _ = state
            headers["Sforce-Limit-Info"] = f"api-usage={w.count - int(left)}/{w.count}"
        if status == 429:
            status = 403
            headers.pop("Retry-After", None)
            body = [
                {"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}
            ]
    elif dialect == "binance":
        for w, left, _ in d.state:
            if w.unit == "cost":
                used = w.count - int(left)
                headers[f"X-MBX-USED-WEIGHT-{_interval(w.seconds).upper()}"] = str(used)
        if status in (429, 418):
            code = -1003
            body = {
                "code": code,
                "msg": "Too much request weight used; "
                + ("IP banned" if status == 418 else "please use the websocket"),
            }
    return status, headers, body


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: FakeServer

    def _serve(self) -> None:
        # Headers are parsed by now: this is the request's arrival.
        now = time.monotonic()
        length = self.headers.get("Content-Length", "0")
        with contextlib.suppress(ValueError, OSError):
            if length.isascii() and length.isdigit() and int(length) > 0:
                self.rfile.read(min(int(length), 1 << 20))
        headers = {k.lower(): v for k, v in self.headers.items()}
        server = self.server
        decision = server.judge(self.command, self.path, headers, now)
        if server.fake.latency > 0:
            time.sleep(server.fake.latency)
        if decision.status == RESET:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        status, extra, body = decision.reply
        data = b"" if self.command == "HEAD" else json.dumps(body).encode()
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
            "Content-Type: application/json",
            f"Content-Length: {len(data)}",
            f"Date: {email.utils.formatdate(usegmt=True)}",
            *(f"{name}: {value}" for name, value in extra.items()),
        ]
        with contextlib.suppress(OSError):
            self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve

    def log_message(self, format: str, *args: object) -> None:
        pass


def child(config: FakeConfig, conn: Connection, parent: int) -> None:
    """Child process body: serve and answer commands until told to stop (or orphaned)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us in its finally
    server = FakeServer(config)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    conn.send(server.server_address[1])
    end = time.monotonic() + MAX_LIFE
    with contextlib.suppress(EOFError, OSError):
        while os.getppid() == parent and time.monotonic() < end:
            if not conn.poll(0.2):
                continue
            command = conn.recv()
            if command == "arrivals":
                conn.send(server.arrivals())
            elif command == "clear":
                server.clear()
                conn.send(None)
            else:
                break
    server.shutdown()
    server.server_close()

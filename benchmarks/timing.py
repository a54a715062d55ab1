"""Timing at the limit: a slow server, a busy client process, and the demo's floor.

- ``latency``: a strict server in its own process answering each request 50 ms after its
  arrival, limit 20/s, 200 GETs from 16 threads. The ideal schedule sends 20 at t=0 and 20
  more each second and ends one latency after the last arrival: ``(N - L) / L + 0.05`` s.
  Efficiency = ideal / measured wall time. syncfetch ``Session("20/second", retry=0)`` beside
  requests-ratelimiter ``LimiterSession(per_second=20)``.
- ``busy``: 16 sender threads share one syncfetch session while 3 CPU-bound threads run in
  the same process, so senders wait for the GIL between their token and their send.
  Limits ``["10/second", "40/5s"]`` and ``"50/second"``, 3 runs each. The server admits with
  10 ms of stamping slack (an arrival within 10 ms of leaving a window no longer counts) and
  also counts the admitted arrivals that a window without slack would have refused.
- ``demo``: ``syncfetch demo --quick`` (200 GETs against the demo's provider: 25/s and
  1000/min, 30% 503s, 2% resets, 20 ms latency), syncfetch and requests-ratelimiter only; time
  over the floor the provider's windows allow for what it admitted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import requests
from _report import Options, Table
from _servers import ServerProcess
from requests.adapters import HTTPAdapter
from requests_ratelimiter import LimiterSession

import syncfetch

THREADS = 16
LATENCY = 0.05
SLACK = 0.010
BUSY_THREADS = 3


def _drive(session: requests.Session, url: str, n: int) -> tuple[int, float]:
    """Send ``n`` GETs from THREADS threads; return (answers that were 200, wall seconds)."""

    def one(i: int) -> int:
        try:
            return session.get(f"{url}item/{i}", timeout=10).status_code
        except requests.RequestException:
            return -1

    start = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        codes = list(pool.map(one, range(n)))
    return codes.count(200), time.monotonic() - start


def _limiter_session(limit: int) -> requests.Session:
    session = LimiterSession(per_second=limit)
    session.mount("http://", HTTPAdapter(pool_maxsize=THREADS))
    return session


def latency(opts: Options) -> Table:
    limit, n = 20, 200
    ideal = (n - limit) / limit + LATENCY
    table = Table(
        "latency",
        f"strict server {limit}/s answering {LATENCY * 1000:.0f} ms after each arrival, "
        f"{n} GETs from {THREADS} threads",
        ["client", "429s (server)", "200s", "wall s", "ideal s", "ideal / wall"],
    )
    clients: list[tuple[str, Callable[[], requests.Session]]] = [
        (
            f'syncfetch.Session("{limit}/second", retry=0)',
            lambda: syncfetch.Session(f"{limit}/second", max_concurrency=THREADS, retry=0),
        ),
        (f"LimiterSession(per_second={limit})", lambda: _limiter_session(limit)),
    ]
    for name, make in clients:
        session = make()
        with ServerProcess([(limit, 1.0)], latency=LATENCY) as server:
            try:
                ok, wall = _drive(session, server.url, n)
            finally:
                session.close()
            counts = server.stop()
        ratio = f"{ideal / wall:.3f}" if ok == n else f"n/a ({n - ok} refused)"
        table.rows.append(
            [name, str(counts.rejected), f"{ok}/{n}", f"{wall:.2f}", f"{ideal:.2f}", ratio]
        )
    table.notes.append(
        "ideal = (N - L) / L + latency: L at t=0, L more each second, the last answer one "
        "latency after the last arrival. Goal for syncfetch: >= 0.97."
    )
    return table


def _spin(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(range(2000))


def busy(opts: Options) -> Table:
    runs = 2 if opts.quick else 3
    cases: list[tuple[str, list[str], list[tuple[int, float]], int]] = [
        ('["10/second", "40/5s"]', ["10/second", "40/5s"], [(10, 1.0), (40, 5.0)], 60),
        ('"50/second"', ["50/second"], [(50, 1.0)], 300),
    ]
    table = Table(
        "busy",
        f"{BUSY_THREADS} CPU-bound threads beside {THREADS} senders in the client process, "
        f"strict server with {SLACK * 1000:.0f} ms stamping slack, {runs} runs per limit",
        ["limits", "GETs per run", "429s per run", "admitted only by the slack, per run"],
    )
    for label, limits, windows, n in cases:
        rejected: list[str] = []
        slack_only: list[str] = []
        for _ in range(runs):
            stop = threading.Event()
            spinners = [threading.Thread(target=_spin, args=(stop,)) for _ in range(BUSY_THREADS)]
            with ServerProcess(windows, slack=SLACK) as server:
                session = syncfetch.Session(limits, max_concurrency=THREADS, retry=0)
                for thread in spinners:
                    thread.start()
                try:
                    _drive(session, server.url, n)
                finally:
                    stop.set()
                    for thread in spinners:
                        thread.join()
                    session.close()
                counts = server.stop()
            rejected.append(str(counts.rejected))
            slack_only.append(str(counts.strict_over))
        table.rows.append([label, str(n), ", ".join(rejected), ", ".join(slack_only)])
    table.notes.append(
        "Goal: 0 x 429 with the 10 ms slack. The last column counts arrivals the server "
        "admitted only because of the slack (a window without it would have refused them)."
    )
    return table


def demo(opts: Options) -> Table:
    from syncfetch import _demo
    from syncfetch._provider import Provider, ProviderConfig, floor_seconds

    n, budget = 200, 30.0
    cfg = ProviderConfig()
    table = Table(
        "demo",
        f"syncfetch demo --quick: {n} GETs per client; provider: {cfg.describe()}",
        ["client", "success", "429s", "time s", "floor s", "time / floor"],
    )
    for index, client in enumerate(_demo.CLIENTS):
        if client.name not in ("syncfetch", "requests-ratelimiter"):
            continue
        with Provider(cfg) as provider:
            report = _demo._run_client(index, provider.url, n, cfg, budget)
            arrivals = provider.stop()
        span = floor_seconds(sum(1 for a in arrivals if a.status != 429), cfg.limits)
        floor = span + cfg.latency
        rejected = sum(1 for a in arrivals if a.status == 429)
        table.rows.append(
            [
                client.name,
                f"{100 * report.ok / n:.1f}%",
                str(rejected),
                f"{report.elapsed:.2f}" + ("*" if report.stopped else ""),
                f"{floor:.2f}",
                f"{report.elapsed / floor:.3f}",
            ]
        )
    table.notes.append(
        "floor: the least time the provider's windows allow for the requests it admitted, "
        "plus one latency (as in the demo's table). Goal for syncfetch: <= 1.05."
    )
    return table

"""Per-call overhead: sequential GETs on loopback with no limit that ever binds.

Four clients take turns against one keep-alive server running in its own process: plain
``requests.Session``, ``syncfetch.Session()`` (no limit, default retry policy),
``syncfetch.Session("100000/second")`` (limiter on but never binding) and requests-ratelimiter's
``LimiterSession(per_second=100000)``. Each client sends ``n`` GETs one after another per round;
the order of the clients rotates every round so that drift (CPU frequency, the server's own
state) falls on all of them alike. Reported: the median over rounds of the wall time per call,
and its ratio to plain requests measured in the same run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import requests
from _report import Options, Table, median
from _servers import ServerProcess
from requests_ratelimiter import LimiterSession

import syncfetch

TARGET = 1.05  # syncfetch within 5% of plain requests
ROUNDS = 5

CLIENTS: list[tuple[str, Callable[[], requests.Session]]] = [
    ("requests.Session (plain)", requests.Session),
    ("syncfetch.Session()", lambda: syncfetch.Session()),
    ('syncfetch.Session("100000/second")', lambda: syncfetch.Session("100000/second")),
    ("LimiterSession(per_second=100000)", lambda: LimiterSession(per_second=100000)),
]


def _per_call(session: requests.Session, url: str, n: int) -> float:
    """Seconds per call for ``n`` sequential GETs; every answer must be a 200."""
    get = session.get
    bad = 0
    start = time.perf_counter()
    for _ in range(n):
        if get(url).status_code != 200:
            bad += 1
    elapsed = time.perf_counter() - start
    if bad:
        raise RuntimeError(f"{bad} of {n} answers were not 200")
    return elapsed / n


def run(opts: Options) -> Table:
    n = 1000 if opts.quick else 3000
    table = Table(
        "overhead",
        f"sequential GETs on loopback, {n} per client per round, {ROUNDS} rounds",
        ["client", "median µs/call", "min µs/call", "vs plain"],
    )
    timings: dict[str, list[float]] = {name: [] for name, _ in CLIENTS}
    with ServerProcess() as server:
        sessions = {name: make() for name, make in CLIENTS}
        try:
            # Warm-up: open each client's connection and fill its caches before timing.
            for session in sessions.values():
                _per_call(session, server.url, 100)
            for rnd in range(ROUNDS):
                shift = rnd % len(CLIENTS)
                for name, _ in CLIENTS[shift:] + CLIENTS[:shift]:
                    timings[name].append(_per_call(sessions[name], server.url, n) * 1e6)
        finally:
            for session in sessions.values():
                session.close()
    plain = median(timings[CLIENTS[0][0]])
    for name, _ in CLIENTS:
        med = median(timings[name])
        table.rows.append([name, f"{med:.1f}", f"{min(timings[name]):.1f}", f"{med / plain:.3f}x"])
    for name, _ in CLIENTS[1:3]:
        ratio = median(timings[name]) / plain
        verdict = "met" if ratio <= TARGET else f"MISSED by {(ratio - TARGET) * 100:.1f} points"
        table.notes.append(
            f"target: {name} within 5% of plain requests -> {(ratio - 1) * 100:+.1f}%: {verdict}"
        )
    return table

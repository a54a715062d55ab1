"""Per-call overhead: sequential GETs on loopback with no limit that ever binds.

Four clients take turns against one keep-alive server running in its own process: plain
``requests.Session``, ``syncfetch.Session()`` (no limit, default retry policy),
``syncfetch.Session("100000/second")`` (limiter on but never binding) and requests-ratelimiter's
``LimiterSession(per_second=100000)``. Each sends ``n`` GETs one after another, in short blocks
of ``BLOCK`` calls: one round is one block per client, and the order of the clients rotates
every round. Short interleaved blocks matter on a shared VM, where the CPU speed drifts by 10-30%
within a second: five long rounds gave ratios that moved by +-5% from run to run, while the
ratio of two blocks run back to back is steady. Reported: the median over rounds of the time
per call, and the median over rounds of each client's time divided by plain requests' time in
the same round (with the 25th-75th percentile of that ratio, to show the noise).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import requests
from _report import Options, Table, median
from _servers import ServerProcess
from requests_ratelimiter import LimiterSession

import syncfetch

TARGET = 1.05  # syncfetch within 5% of plain requests
BLOCK = 25  # calls per client per round

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
    rounds = n // BLOCK
    table = Table(
        "overhead",
        f"sequential GETs on loopback, {n} per client in {rounds} interleaved rounds",
        ["client", "median µs/call", "vs plain (median)", "vs plain (p25-p75)"],
    )
    timings: dict[str, list[float]] = {name: [] for name, _ in CLIENTS}
    with ServerProcess() as server:
        sessions = {name: make() for name, make in CLIENTS}
        try:
            # Warm-up: open each client's connection and fill its caches before timing.
            for session in sessions.values():
                _per_call(session, server.url, 100)
            for rnd in range(rounds):
                shift = rnd % len(CLIENTS)
                for name, _ in CLIENTS[shift:] + CLIENTS[:shift]:
                    timings[name].append(_per_call(sessions[name], server.url, BLOCK) * 1e6)
        finally:
            for session in sessions.values():
                session.close()
    plain = timings[CLIENTS[0][0]]
    ratios: dict[str, float] = {}
    for name, _ in CLIENTS:
        paired = [t / p for t, p in zip(timings[name], plain, strict=True)]
        q1, ratios[name], q3 = statistics.quantiles(paired, n=4)
        table.rows.append(
            [name, f"{median(timings[name]):.1f}", f"{ratios[name]:.3f}x", f"{q1:.3f}-{q3:.3f}"]
        )
    table.notes.append(
        "vs plain = median of per-round ratios (each block against plain's block in the same "
        "round); trust it over comparing the unpaired µs medians, which drift with the machine."
    )
    for name, _ in CLIENTS[1:3]:
        ratio = ratios[name]
        verdict = "met" if ratio <= TARGET else f"MISSED by {(ratio - TARGET) * 100:.1f} points"
        table.notes.append(
            f"target: {name} within 5% of plain requests -> {(ratio - 1) * 100:+.1f}%: {verdict}"
        )
    return table

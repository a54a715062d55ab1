"""Executor throughput: N GETs with 16 workers and no limit, three ways.

Against one keep-alive server in its own process: syncfetch
``Session(max_concurrency=16).map(urls)``, requests-futures ``FuturesSession(max_workers=16)``
(submit everything, then collect), and a hand-written ``ThreadPoolExecutor(16)`` running
``requests.Session.get`` with an ``HTTPAdapter(pool_maxsize=16)``. Each round builds every
client afresh (pool, threads, connections), the order rotates every round, and the median
requests per second over the rounds is compared with the hand-written pool's.

Skipped, saying so, while ``syncfetch.Session`` has no ``map``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import requests
from _report import Options, Table, median
from _servers import ServerProcess
from requests.adapters import HTTPAdapter
from requests_futures.sessions import FuturesSession

import syncfetch

WORKERS = 16
ROUNDS = 3


def available() -> bool:
    return hasattr(syncfetch.Session, "map")


def _syncfetch(urls: list[str]) -> int:
    with syncfetch.Session(max_concurrency=WORKERS) as session:
        return sum(1 for result in session.map(urls) if result.ok)


def _futures(urls: list[str]) -> int:
    with FuturesSession(max_workers=WORKERS) as session:
        futures = [session.get(url) for url in urls]
        return sum(1 for future in futures if future.result().ok)


def _hand_written(urls: list[str]) -> int:
    with requests.Session() as session, ThreadPoolExecutor(WORKERS) as pool:
        session.mount("http://", HTTPAdapter(pool_maxsize=WORKERS))
        return sum(1 for resp in pool.map(session.get, urls) if resp.ok)


CLIENTS: list[tuple[str, Callable[[list[str]], int]]] = [
    ("ThreadPoolExecutor(16) + requests.Session", _hand_written),
    ("syncfetch Session(max_concurrency=16).map", _syncfetch),
    ("FuturesSession(max_workers=16)", _futures),
]


def run(opts: Options) -> Table:
    n = 1000 if opts.quick else 3000
    table = Table(
        "executor",
        f"{n} GETs, {WORKERS} workers, no limit, {ROUNDS} rounds",
        ["client", "median req/s", "best req/s", "vs hand-written pool"],
    )
    if not available():
        table.skipped = "not available: syncfetch.Session has no map() yet"
        return table
    rates: dict[str, list[float]] = {name: [] for name, _ in CLIENTS}
    with ServerProcess() as server:
        urls = [f"{server.url}item/{i}" for i in range(n)]
        for rnd in range(ROUNDS):
            shift = rnd % len(CLIENTS)
            for name, fetch in CLIENTS[shift:] + CLIENTS[:shift]:
                start = time.perf_counter()
                ok = fetch(urls)
                elapsed = time.perf_counter() - start
                if ok != n:
                    raise RuntimeError(f"{name}: only {ok} of {n} answers were 200")
                rates[name].append(n / elapsed)
    base = median(rates[CLIENTS[0][0]])
    for name, _ in CLIENTS:
        med = median(rates[name])
        table.rows.append([name, f"{med:.0f}", f"{max(rates[name]):.0f}", f"{med / base:.3f}x"])
    return table

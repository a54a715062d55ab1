"""Compliance: how many 429s each client provokes from a strict server, and at what speed.

A server in its own process admits ``L`` requests per sliding second and answers 429 (with
``Retry-After: 1``, not counted) above that. Sixteen client threads share one session and send
``N = 11 * L`` GETs (``6 * L`` with ``--quick``) through it. Clients: syncfetch
``Session(f"{L}/second", max_concurrency=16, retry=0)`` (no retries, so every 429 shows),
requests-ratelimiter ``LimiterSession(per_second=L)``, and a plain ``requests.Session`` with no
limiting. Each client gets a fresh server, whose counts are the ones reported.

The fastest compliant schedule sends ``L`` requests at t=0 and ``L`` more each second, so it
needs ``(N - L) / L`` seconds; efficiency is that ideal divided by the measured wall time, and
is only given for a client that got all ``N`` answered 200.
"""

from __future__ import annotations

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


def _pooled(session: requests.Session) -> requests.Session:
    # requests keeps 10 connections per host by default; give the peers 16, as syncfetch has,
    # so no client pays for reconnecting.
    session.mount("http://", HTTPAdapter(pool_maxsize=THREADS))
    return session


def _clients(limit: int) -> list[tuple[str, Callable[[], requests.Session]]]:
    return [
        (
            f'syncfetch.Session("{limit}/second", retry=0)',
            lambda: syncfetch.Session(f"{limit}/second", max_concurrency=THREADS, retry=0),
        ),
        (f"LimiterSession(per_second={limit})", lambda: _pooled(LimiterSession(per_second=limit))),
        ("requests.Session, no limiting", lambda: _pooled(requests.Session())),
    ]


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


def run(opts: Options) -> Table:
    limit = opts.limit
    n = (6 if opts.quick else 11) * limit
    ideal = (n - limit) / limit
    table = Table(
        "compliance",
        f"strict server {limit}/s sliding 1 s window, {n} GETs from {THREADS} threads",
        [
            "client",
            "429s (server)",
            "200s",
            "wall s",
            "ideal s",
            "efficiency",
            "req/s",
            "sustained vs L",
        ],
    )
    for name, make in _clients(limit):
        session = make()
        with ServerProcess([(limit, 1.0)]) as server:
            try:
                ok, wall = _drive(session, server.url, n)
            finally:
                session.close()
            counts = server.stop()
        # Efficiency means something only for a client that got everything through.
        complete = ok == n
        eff = f"{ideal / wall:.1%}" if complete else f"n/a ({n - ok} refused)"
        # After the first L (allowed at t=0), the window allows L per second at most.
        sustained = f"{(ok - limit) / wall / limit:.3f}x" if complete else "n/a"
        table.rows.append(
            [
                name,
                str(counts.rejected),
                f"{ok}/{n}",
                f"{wall:.2f}",
                f"{ideal:.2f}",
                eff,
                f"{ok / wall:.1f}",
                sustained,
            ]
        )
    table.notes.append(
        "ideal = (N - L) / L s: L at t=0, then L more each second. req/s = 200s / wall; "
        "sustained = (200s - L) / wall, at most L (given for clients that got all N through)."
    )
    table.notes.append(
        "LimiterSession and the plain pool get HTTPAdapter(pool_maxsize=16) (requests keeps 10)."
    )
    return table

"""Retry budget: a flaky server gets every retry, an outage does not multiply the load.

A server in its own process answers 503 to a random share of requests (flaky), or, for
an outage, answers every request with a 503 or a connection reset (alternately) for
``OUTAGE`` seconds, then 200 again. Sixteen threads share one session,
``RetryPolicy(retries=8, backoff_base=0.01, backoff_max=0.05)``, ``max_concurrency=16``,
no rate limit: the scenario of issue 10.

Clients: the default :class:`syncfetch.RetryBudget` and ``budget=None`` (retries alone).
Reported: calls that succeeded (flaky; with the count retries alone are expected to fail,
``calls * p**9``), and for the outage the calls made during it, the attempts the server
saw during it, their ratio, and the seconds from the recovery to the first call answered
200. ``python3 benchmarks/budget.py [--quick]`` (``--quick``: a 10 s outage).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import random
import socket
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import requests
from _report import Options, Table, render_text

import syncfetch

THREADS = 16
RETRIES = 8
OUTAGE = 30.0
POLICY = {"retries": RETRIES, "backoff_base": 0.01, "backoff_max": 0.05}

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
_DOWN = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256


def _serve(
    fail: Synchronized[float], outage: Synchronized[int], hits: Synchronized[int], port: Any
) -> None:
    """Child process: 503 with probability ``fail``; in an outage, 503 or reset, alternately."""
    rng = random.Random()
    turn = [0]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            with hits.get_lock():
                hits.value += 1
            if outage.value:
                turn[0] += 1
                if turn[0] % 2:
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                    self.rfile.close()
                    self.connection.close()
                    return
                self.wfile.write(_DOWN)
            else:
                self.wfile.write(_DOWN if rng.random() < fail.value else _OK)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    port.value = server.server_address[1]
    parent = os.getppid()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    while os.getppid() == parent:  # lives as long as the benchmark
        time.sleep(0.25)


class Server:
    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.fail = ctx.Value("d", 0.0)
        self.outage = ctx.Value("i", 0)
        self.hits = ctx.Value("q", 0)
        port = ctx.Value("i", 0)
        self._proc = ctx.Process(
            target=_serve, args=(self.fail, self.outage, self.hits, port), daemon=True
        )
        self._proc.start()
        deadline = time.monotonic() + 30
        while not port.value and time.monotonic() < deadline:
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{port.value}/"

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.join(5)


def _session(budget: bool) -> syncfetch.Session:
    policy = syncfetch.RetryPolicy(**POLICY, budget=syncfetch.RetryBudget() if budget else None)  # type: ignore[arg-type]
    return syncfetch.Session(retry=policy, max_concurrency=THREADS)


def _ok(session: syncfetch.Session, url: str) -> bool:
    try:
        return session.get(url).status_code == 200
    except requests.RequestException:
        return False


def flaky(server: Server, p: float, calls: int, budget: bool) -> tuple[int, int, int]:
    """(calls answered 200, attempts, retries refused by the budget) at failure rate p."""
    server.fail.value = p
    before = server.hits.value
    with _session(budget) as session, ThreadPoolExecutor(THREADS) as pool:
        ok = sum(pool.map(lambda _: _ok(session, server.url), range(calls)))
        refused = session.stats.budget_exhausted
    return ok, server.hits.value - before, refused


def outage(server: Server, seconds: float, budget: bool) -> tuple[int, int, int, float]:
    """(calls started in the outage, attempts seen in it, calls started in the second
    after it that failed, s from the recovery to the first 200)."""
    server.fail.value = 0.0
    stop = threading.Event()
    started: list[float] = []  # start times of calls, appended by many threads (list is safe)
    answered: list[float] = []  # end times of calls answered 200
    failed: list[float] = []  # start times of calls that were not
    with _session(budget) as session:

        def loop() -> None:
            while not stop.is_set():
                start = time.monotonic()
                started.append(start)
                if _ok(session, server.url):
                    answered.append(time.monotonic())
                else:
                    failed.append(start)

        threads = [threading.Thread(target=loop) for _ in range(THREADS)]
        for t in threads:
            t.start()
        time.sleep(2.0)  # healthy: the budget is full
        server.outage.value = 1
        begin, hits0 = time.monotonic(), server.hits.value
        time.sleep(seconds)
        server.outage.value = 0
        end, hits1 = time.monotonic(), server.hits.value
        time.sleep(3.0)
        stop.set()
        for t in threads:
            t.join()
    failed_after = sum(1 for t in failed if end + 1.0 <= t)
    calls = sum(1 for t in started if begin <= t < end)
    first = min((t for t in answered if t >= end), default=float("inf"))
    return calls, hits1 - hits0, failed_after, first - end


def run(opts: Options) -> Table:
    seconds = 10.0 if opts.quick else OUTAGE
    table = Table(
        "budget",
        f"16 threads, RetryPolicy(retries={RETRIES}, backoff 0.01-0.05 s), no limit",
        [
            "scenario",
            "budget",
            "calls",
            "succeeded",
            "retries alone fail",
            "refused retries",
            "attempts",
            "attempts/call",
        ],
    )
    server = Server()
    try:
        cases: list[tuple[str, float, int]] = [("flaky 34%", 0.34, 400), ("flaky 40%", 0.40, 4000)]
        for name, p, calls in cases:
            for budget in (True, False):
                ok, hits, refused = flaky(server, p, calls, budget)
                table.rows.append(
                    [
                        name,
                        "default" if budget else "none",
                        str(calls),
                        str(ok),
                        f"{calls * p ** (RETRIES + 1):.2f}",
                        str(refused),
                        str(hits),
                        f"{hits / calls:.2f}",
                    ]
                )
        for budget in (True, False):
            calls, hits, failed_after, first = outage(server, seconds, budget)
            table.rows.append(
                [
                    f"outage {seconds:g} s",
                    "default" if budget else "none",
                    str(calls),
                    "-",
                    "-",
                    "-",
                    str(hits),
                    f"{hits / max(calls, 1):.2f}",
                ]
            )
            table.notes.append(
                f"outage, budget {'default' if budget else 'none'}: first 200 {first:.2f} s "
                f"after the recovery; calls started 1 s or more after it that failed: "
                f"{failed_after}."
            )
    finally:
        server.stop()
    table.notes.append(
        "attempts: requests the server saw (flaky: the whole run; outage: during the outage, "
        "every answer a 503 or a reset). retries alone fail: calls * p**9, the expected "
        "failures with no budget."
    )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"a 10 s outage instead of {OUTAGE:g} s"
    )
    args = parser.parse_args(argv)
    logging.getLogger("syncfetch").setLevel(logging.ERROR)  # one give-up line per call
    print(render_text(run(Options(quick=args.quick))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Retry budget: a flaky server gets every retry, an outage does not multiply the load.

The fake API's server in its own process answers 503 to a random share of requests (flaky), or, for
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
import functools
import logging
import multiprocessing
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.sharedctypes import Synchronized

import requests
from _report import Options, Table, render_text

import syncfetch
from syncfetch.testing._child import ServerChild
from syncfetch.testing._server import FakeConfig, FakeHandler, FakeServer

THREADS = 16
RETRIES = 8
OUTAGE = 30.0
POLICY = {"retries": RETRIES, "backoff_base": 0.01, "backoff_max": 0.05}


class _Flaky(FakeServer):
    """The fake API's server, answering 503 with probability ``fail``; in an outage, 503 or
    a connection reset, alternately. ``hits`` counts every request."""

    def __init__(
        self, fail: Synchronized[float], outage: Synchronized[int], hits: Synchronized[int]
    ) -> None:
        super().__init__(FakeConfig())
        self.fail, self.outage, self.hits = fail, outage, hits
        self.rng = random.Random()
        self.turn = 0  # outage answers so far (guarded by _lock)

    def respond(self, handler: FakeHandler) -> None:
        with self.hits.get_lock():
            self.hits.value += 1
        if self.outage.value:
            with self._lock:
                self.turn += 1
                reset = self.turn % 2 == 1
            if reset:
                handler.reset()
            else:
                handler.send(503, {}, b"down")
        elif self.rng.random() < self.fail.value:
            handler.send(503, {}, b"down")
        else:
            handler.send(200, {}, b"ok")


class Server:
    """:class:`_Flaky` in its own process; ``fail``, ``outage`` and ``hits`` are shared."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.fail = ctx.Value("d", 0.0)
        self.outage = ctx.Value("i", 0)
        self.hits = ctx.Value("q", 0)
        self._child = ServerChild(functools.partial(_Flaky, self.fail, self.outage, self.hits))
        self.url = f"http://127.0.0.1:{self._child.start()}/"

    def stop(self) -> None:
        self._child.stop()


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
    # One give-up line per call (tens of thousands in the outage): quiet here, also when
    # run.py runs this benchmark.
    quiet = logging.getLogger("syncfetch")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return _run(opts)
    finally:
        quiet.setLevel(level)


def _run(opts: Options) -> Table:
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
    print(render_text(run(Options(quick=args.quick))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``syncfetch demo``: one batch through five clients against a strict, flaky local API.

Each client runs in its own process (so its memory and CPU are its own) against a freshly
started provider (so every client meets an empty window), with a wall-clock budget after
which it is stopped and its unfinished items count as failures.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from multiprocessing.connection import Connection
from typing import IO

import requests
from requests.adapters import HTTPAdapter

from ._provider import Arrival, Provider, ProviderConfig, floor_seconds, serve
from ._retry import RetryPolicy
from ._session import Session

Done = Callable[[int, bool], None]
THREADS = 50
TIMEOUT = (3.05, 30.0)


def _get(session: requests.Session, url: str) -> bool:
    try:
        with session.get(url, timeout=TIMEOUT) as resp:
            return resp.ok
    except requests.RequestException:
        return False


def _flood(urls: list[str], cfg: ProviderConfig, done: Done) -> None:
    """(1) ThreadPoolExecutor(50) and one requests.Session, no limit, no retries."""
    with requests.Session() as session, ThreadPoolExecutor(THREADS) as pool:
        # A pool as large as the thread count, as a careful user would mount.
        session.mount("http://", HTTPAdapter(pool_maxsize=THREADS))
        for i, url in enumerate(urls):
            pool.submit(lambda i, url: done(i, _get(session, url)), i, url)


def _semaphore_sleep(urls: list[str], cfg: ProviderConfig, done: Done) -> None:
    """(2) The common recipe: a Semaphore(50) around each call and a 0.1 s sleep after it."""
    gate = threading.Semaphore(THREADS)

    def one(i: int, url: str) -> None:
        with gate:
            ok = _get(session, url)
        time.sleep(0.1)
        done(i, ok)

    with requests.Session() as session, ThreadPoolExecutor(THREADS) as pool:
        session.mount("http://", HTTPAdapter(pool_maxsize=THREADS))
        for i, url in enumerate(urls):
            pool.submit(one, i, url)


def _ratelimiter(urls: list[str], cfg: ProviderConfig, done: Done) -> None:
    """(3) requests-ratelimiter at the per-second rate, urllib3 Retry(5) in the adapter."""
    from requests_ratelimiter import LimiterSession
    from urllib3.util.retry import Retry

    retry = Retry(total=5, backoff_factor=0.5, status_forcelist=[429, 500, 502, 503, 504])
    with LimiterSession(per_second=cfg.rate) as session, ThreadPoolExecutor(THREADS) as pool:
        session.mount("http://", HTTPAdapter(max_retries=retry, pool_maxsize=THREADS))
        for i, url in enumerate(urls):
            pool.submit(lambda i, url: done(i, _get(session, url)), i, url)


def _futures(urls: list[str], cfg: ProviderConfig, done: Done) -> None:
    """(4) requests-futures FuturesSession(max_workers=50), no limit."""
    from requests_futures.sessions import FuturesSession  # type: ignore[import-untyped]

    with FuturesSession(max_workers=THREADS) as session:
        futures: dict[Future[requests.Response], int] = {
            session.get(url, timeout=TIMEOUT): i for i, url in enumerate(urls)
        }
        for future in as_completed(futures):
            try:
                ok = future.result().ok
            except requests.RequestException:
                ok = False
            done(futures[future], ok)


def _syncfetch(urls: list[str], cfg: ProviderConfig, done: Done) -> None:
    """(5) syncfetch with the provider's documented limits and 5 retries."""
    limits = [f"{count}/{'second' if s == 1 else 'minute'}" for count, s in cfg.limits]
    with Session(limits, max_concurrency=25, retry=RetryPolicy(retries=5)) as session:
        # Unordered, like every other client here. In input order, an item deep in its
        # backoff holds back the map() window (head-of-line blocking): measured 1.28x the
        # floor on 1,000 GETs instead of 1.07x.
        for result in session.map(urls, ordered=False):
            done(result.index, result.ok)


@dataclasses.dataclass(frozen=True)
class Client:
    """A contender: its table name, its batch function, and the package it needs."""

    name: str
    run: Callable[[list[str], ProviderConfig, Done], None]
    module: str | None = None
    package: str | None = None


CLIENTS = (
    Client("thread flood", _flood),
    Client("semaphore(50)+sleep(0.1)", _semaphore_sleep),
    Client("requests-ratelimiter", _ratelimiter, "requests_ratelimiter", "requests-ratelimiter"),
    Client("requests-futures", _futures, "requests_futures.sessions", "requests-futures"),
    Client("syncfetch", _syncfetch),
)


@dataclasses.dataclass(frozen=True)
class Report:
    """What a client process reports: items ok and finished, seconds, CPU, memory growth."""

    ok: int = 0
    finished: int = 0
    elapsed: float = 0.0
    stopped: bool = False
    cpu: float = 0.0
    memory: float | None = None
    error: str | None = None


def _peak_rss() -> float | None:
    """Peak resident memory of this process in bytes, where the platform tells."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak if sys.platform == "darwin" else peak * 1024  # Linux counts KiB


def _client_child(
    index: int, base: str, n: int, cfg: ProviderConfig, budget: float, conn: Connection, parent: int
) -> None:
    """Client process body: run one client for at most ``budget`` seconds, report, exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    # Clients log every retry and give-up; the table is what the demo shows.
    logging.getLogger().addHandler(logging.NullHandler())
    client = CLIENTS[index]
    if client.module:
        importlib.import_module(client.module)  # imports are not the batch's memory
    urls = [f"{base}items/{i}" for i in range(n)]
    outcomes = [False] * n
    lock = threading.Lock()  # guards outcomes, finished, ended
    finished = 0
    ended = 0.0
    all_done = threading.Event()
    errors: list[str] = []

    def done(i: int, ok: bool) -> None:
        nonlocal finished, ended
        with lock:
            outcomes[i] = ok
            finished += 1
            if finished == n:
                ended = time.monotonic()
                all_done.set()

    def body() -> None:
        try:
            client.run(urls, cfg, done)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            all_done.set()

    rss = _peak_rss()
    cpu = time.process_time()
    start = time.monotonic()
    deadline = start + budget
    threading.Thread(target=body, daemon=True).start()
    while not all_done.wait(min(0.1, max(deadline - time.monotonic(), 0.0))):
        if time.monotonic() >= deadline or os.getppid() != parent:
            break
    with lock:
        report = Report(
            ok=sum(outcomes),
            finished=finished,
            elapsed=(ended or time.monotonic()) - start,
            stopped=finished < n and not errors,
            cpu=time.process_time() - cpu,
            memory=None if rss is None else (_peak_rss() or rss) - rss,
            error=errors[0] if errors else None,
        )
    with contextlib.suppress(OSError):  # the parent may be gone
        conn.send(report)
        conn.close()
    # Stragglers of a stopped client must not keep the process (or the demo) alive.
    os._exit(0)


def _run_client(index: int, base: str, n: int, cfg: ProviderConfig, budget: float) -> Report:
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_client_child,
        args=(index, base, n, cfg, budget, sender, os.getpid()),
        daemon=True,
        name="syncfetch-demo-client",
    )
    try:
        proc.start()
        sender.close()
        # The child stops itself at the budget; the margin covers start-up only.
        if receiver.poll(budget + 30):
            report: Report = receiver.recv()
            return report
        return Report(stopped=True, elapsed=budget, error="the client process did not report")
    except EOFError:
        return Report(error="the client process died")
    finally:
        if proc.is_alive():
            proc.terminate()
        if proc.pid is not None:  # started
            proc.join(5)
        receiver.close()


@dataclasses.dataclass(frozen=True)
class Row:
    """One client's line of the table."""

    name: str
    n: int
    report: Report | None
    arrivals: list[Arrival]
    floor: float
    note: str | None = None


def run_demo(cfg: ProviderConfig, n: int, budget: float, log: IO[str] = sys.stderr) -> list[Row]:
    """Run the batch through every client, each against a fresh provider.

    :param cfg: the provider's settings.
    :param n: GETs in the batch.
    :param budget: seconds each client may take before it is stopped.
    :param log: where progress lines go.
    :returns: one row per client, in table order.
    """
    rows: list[Row] = []
    for index, client in enumerate(CLIENTS):
        if client.module and importlib.util.find_spec(client.module.split(".")[0]) is None:
            note = f"skipped: pip install {client.package}"
            rows.append(Row(client.name, n, None, [], 0.0, note))
            continue
        print(f"[{index + 1}/{len(CLIENTS)}] {client.name} ...", file=log, flush=True)
        # A fresh provider per client: an empty window, and stragglers of the previous
        # client knock on a closed port instead of eating this one's quota.
        with Provider(cfg) as provider:
            report = _run_client(index, provider.url, n, cfg, budget)
            arrivals = provider.stop()
        # No floor (0) when everything admitted fits in one burst: the limit did not bind.
        span = floor_seconds(sum(1 for a in arrivals if a.status != 429), cfg.limits)
        floor = span + cfg.latency if span > 0 else 0.0
        rows.append(Row(client.name, n, report, arrivals, floor, report.error))
    return rows


def format_table(rows: list[Row], cfg: ProviderConfig, budget: float) -> str:
    """The results table, with its legend."""
    head = ("client", "success", "received", "429s", "time", "x floor", "peak mem", "CPU")
    lines = [head]
    for row in rows:
        rep = row.report
        if rep is None:
            lines.append((row.name, "-", "-", "-", "-", "-", "-", "-"))
            continue
        n429 = sum(1 for a in row.arrivals if a.status == 429)
        mem = "n/a" if rep.memory is None else f"+{rep.memory / 2**20:.1f} MB"
        ratio = f"{rep.elapsed / row.floor:.2f}x" if row.floor > 0 else "-"
        lines.append(
            (
                row.name,
                f"{100 * rep.ok / row.n:.1f}%",
                f"{len(row.arrivals):,}",
                f"{n429:,}",
                f"{rep.elapsed:.1f} s" + ("*" if rep.stopped else ""),
                ratio,
                mem,
                f"{rep.cpu:.2f} s",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    ]
    out.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  {row.name}: {row.note}" for row in rows if row.note]
    n = rows[0].n if rows else 0
    return "\n".join(
        [
            f"{n:,} GETs per client; provider: {cfg.describe()}",
            "",
            *out,
            "",
            "floor: the least time the provider's windows allow for the requests it admitted",
            "(earliest schedule plus one latency; '-': they fit in one burst).",
            *(
                [f"*: stopped at the {budget:g} s budget; unfinished items count as failures."]
                if any(row.report is not None and row.report.stopped for row in rows)
                else []
            ),
            "peak mem: growth of the client process's peak RSS. CPU: its user + system time.",
            *notes,
        ]
    )


def plot(rows: list[Row], cfg: ProviderConfig, path: str) -> bool:
    """Draw requests per second over time, one panel per client, against the limit.

    :returns: False (after a one-line hint) when matplotlib is not installed.
    """
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        print(
            "syncfetch demo: --plot needs matplotlib (pip install matplotlib); no plot drawn",
            file=sys.stderr,
        )
        return False
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    drawn = [row for row in rows if row.report is not None]
    if not drawn:
        return False
    fig, axes = plt.subplots(
        len(drawn), 1, sharex=True, figsize=(9, 1.6 * len(drawn) + 1.2), squeeze=False
    )
    for ax, row in zip(axes[:, 0], drawn, strict=True):
        times = [a.at for a in row.arrivals]
        t0 = min(times, default=0.0)
        bins = int(max(times, default=0.0) - t0) + 1
        received, admitted = [0] * bins, [0] * bins
        for a in row.arrivals:
            received[int(a.at - t0)] += 1
            admitted[int(a.at - t0)] += a.status != 429
        edges = list(range(bins + 1))
        ax.stairs(received, edges, color="tab:orange", label="received")
        ax.stairs(admitted, edges, color="tab:blue", label="admitted (not 429)")
        ax.axhline(cfg.rate, color="red", linestyle="--", linewidth=1, label="limit per second")
        if cfg.per_minute:
            ax.axhline(
                cfg.per_minute / 60, color="red", linestyle=":", linewidth=1, label="per minute/60"
            )
        ax.set_title(row.name, loc="left", fontsize=9)
        ax.set_ylabel("req/s")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(cfg.describe(), y=0.965, fontsize=9)
    axes[-1, 0].set_xlabel("seconds since the client's first request (1 s bins)")
    fig.tight_layout(rect=(0, 0, 1, 0.955))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _number(
    kind: type[int] | type[float], low: float, high: float | None = None
) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value < low or (high is not None and value > high):
            bounds = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
            raise argparse.ArgumentTypeError(f"{text!r} must be {bounds}")
        return value

    return parse


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``demo`` subcommand's options to ``parser``."""
    add = parser.add_argument
    add("-n", type=_number(int, 1), help="GETs per client (default 1000, 200 with --quick)")
    add("--quick", action="store_true", help="200 GETs and a 30 s budget per client")
    add("--budget", type=_number(float, 0.1), help="seconds per client (default 120, quick 30)")
    add("--rate", type=_number(int, 1), default=25, help="provider limit per second (25)")
    add("--per-minute", type=_number(int, 0), default=1000, help="per minute, 0 for none (1000)")
    add("--fail-rate", type=_number(float, 0, 1), default=0.3, help="share of 503s (0.3)")
    add("--reset-rate", type=_number(float, 0, 1), default=0.02, help="share of resets (0.02)")
    add("--latency", type=_number(float, 0), default=0.02, help="seconds per answer (0.02)")
    add("--seed", type=int, default=0, help="seed of the provider's faults (0)")
    add("--plot", metavar="FILE.png", help="draw requests per second per client (matplotlib)")
    add("--serve", action="store_true", help="only run the provider, in the foreground")
    add("--port", type=_number(int, 0, 65535), default=0, help="port for --serve (default: any)")


def demo_main(args: argparse.Namespace) -> int:
    """Run ``syncfetch demo``.

    :returns: the exit status: 0 done, 2 usage error, 130 interrupted.
    """
    problem = None
    if args.fail_rate + args.reset_rate > 1:
        problem = "--fail-rate + --reset-rate exceeds 1"
    elif args.port and not args.serve:
        problem = "--port applies to --serve only (the demo picks free ports)"
    if problem:
        print(f"syncfetch demo: error: {problem}", file=sys.stderr)
        return 2
    cfg = ProviderConfig(
        rate=int(args.rate),
        per_minute=int(args.per_minute),
        fail_rate=args.fail_rate,
        reset_rate=args.reset_rate,
        latency=args.latency,
        seed=args.seed,
        port=int(args.port) if args.serve else 0,
    )
    if args.serve:
        serve(cfg)
        return 0
    n = int(args.n) if args.n is not None else 200 if args.quick else 1000
    budget = args.budget if args.budget is not None else 30.0 if args.quick else 120.0
    try:
        rows = run_demo(cfg, n, budget)
    except KeyboardInterrupt:
        print("\nsyncfetch demo: interrupted", file=sys.stderr)
        return 130
    print(format_table(rows, cfg, budget), flush=True)
    if args.plot and plot(rows, cfg, args.plot):
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0

"""Adaptive rate: how closely each client follows a server limit it is not told.

A strict server in its own process admits ``L1`` requests per sliding second for the
first phase, then ``L2 = 2 * L1`` (it answers 429 with ``Retry-After: 1`` above the
limit). Sixteen threads offer far more than that through one session with no
configured limit and no retries, so every 429 shows. Clients:

- syncfetch ``Session(adaptive=True)``: CUBIC (decrease x0.7, cubic growth, C = 0.1);
- the same session with an AIMD controller in place of CUBIC (halve on a throttle,
  add about one request per second each second), the textbook alternative;
- syncfetch without ``adaptive``: only the key-wide ``Retry-After`` cooldown.

Reported per client: the share of 429s after a warm-up, goodput against the limit in
each phase, and how long after the raise the client first reached 85% of ``L2``.
``python3 benchmarks/adaptive.py --plot FILE.png`` also draws admitted requests per
second over time against the limit (needs matplotlib).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from _report import Options, Table, render_text

import syncfetch
from syncfetch._adaptive import AdaptiveLimiter

ROOT = Path(__file__).resolve().parent.parent
THREADS = 16
WARMUP = 5.0

# The server is the test suite's scripted server (the fake API's core) in its own process
# (tests/_server.py ServerProcess), so it does not compete with the client for the GIL; the
# parent changes its limit half way.
sys.path.insert(0, str(ROOT))
from tests._server import ServerProcess  # noqa: E402


class AIMD(AdaptiveLimiter):
    """Additive increase, multiplicative decrease: the baseline CUBIC is compared with."""

    def on_response(self, key: str, sent_at: float, throttled: bool) -> None:
        now = self._clock()
        with self._lock:
            state = self._state(key, now)
            if throttled:
                if sent_at < state.last_decrease + 1.0:
                    return
                state.rate = max(self.settings.floor, state.rate * 0.5)
                state.last_decrease = now
            else:
                # One request per second more each second: 1/rate per success.
                state.rate += 1.0 / state.rate


def _session(mode: str) -> syncfetch.Session:
    policy = syncfetch.RetryPolicy(retries=0)
    if mode == "none":
        return syncfetch.Session(max_concurrency=THREADS, retry=policy)
    session = syncfetch.Session(adaptive=True, max_concurrency=THREADS, retry=policy)
    if mode == "aimd":
        pipeline = session._pipeline
        assert pipeline.adaptive is not None
        pipeline.adaptive = AIMD(pipeline.adaptive.settings, None)
    return session


def measure(mode: str, l1: int, phase: float) -> tuple[float, list[tuple[float, int]]]:
    """Run one client through both phases; return the start time and (arrival, status)s."""
    server = ServerProcess().start()
    try:
        server.limit([(l1, 1.0)])
        url = server.url
        session = _session(mode)
        start = time.monotonic()
        stop = start + 2 * phase

        def offer() -> None:
            while time.monotonic() < stop:
                session.get(url)

        threads = [threading.Thread(target=offer) for _ in range(THREADS)]
        for t in threads:
            t.start()
        time.sleep(phase)
        server.limit([(2 * l1, 1.0)])
        for t in threads:
            t.join()
        session.close()
        records = [(r.t - start, r.status) for r in server.records]
    finally:
        server.stop()
    return start, records


def per_second(records: list[tuple[float, int]], seconds: int) -> tuple[list[int], list[int]]:
    ok, throttled = [0] * seconds, [0] * seconds
    for t, status in records:
        if 0 <= t < seconds:
            (ok if status == 200 else throttled)[int(t)] += 1
    return ok, throttled


MODES: list[tuple[str, str]] = [
    ("cubic", "syncfetch adaptive=True (CUBIC)"),
    ("aimd", "same session, AIMD controller"),
    ("none", "syncfetch, cooldown only"),
]


def run(
    opts: Options, plot: Callable[[dict[str, list[int]], int, float], None] | None = None
) -> Table:
    l1 = 20
    phase = 15.0 if opts.quick else 25.0
    seconds = int(2 * phase)
    table = Table(
        "adaptive",
        f"server limit {l1}/s, raised to {2 * l1}/s at {phase:.0f} s; {THREADS} threads, "
        "no configured limit, no retries",
        [
            "client",
            f"429 share after {WARMUP:.0f} s",
            f"goodput vs {l1}/s",
            f"goodput vs {2 * l1}/s, last third",
            f"reached 85% of {2 * l1}/s after",
        ],
    )
    series: dict[str, list[int]] = {}
    for mode, label in MODES:
        _, records = measure(mode, l1, phase)
        ok, throttled = per_second(records, seconds)
        series[label] = ok
        after = [i for i in range(int(WARMUP), seconds)]
        sent = sum(ok[i] + throttled[i] for i in after)
        share = sum(throttled[i] for i in after) / max(sent, 1)
        p1 = [ok[i] for i in range(int(WARMUP), int(phase))]
        p2 = [ok[i] for i in range(seconds - int(phase / 3), seconds)]
        follow = next(
            (i - phase for i in range(int(phase), seconds) if ok[i] >= 0.85 * 2 * l1), None
        )
        table.rows.append(
            [
                label,
                f"{100 * share:.1f}%",
                f"{sum(p1) / len(p1) / l1:.2f}",
                f"{sum(p2) / len(p2) / (2 * l1):.2f}",
                "never" if follow is None else f"{follow:.0f} s",
            ]
        )
    table.notes.append(
        "goodput = 200s per second over the server's limit: from the warm-up to the raise, "
        "and over the last third of the run after it."
    )
    if plot is not None:
        plot(series, l1, phase)
    return table


def _plot_to(path: str) -> Callable[[dict[str, list[int]], int, float], None]:
    def draw(series: dict[str, list[int]], l1: int, phase: float) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 3.6))
        seconds = len(next(iter(series.values())))
        limit = [l1 if i < phase else 2 * l1 for i in range(seconds)]
        ax.step(
            range(seconds), limit, where="post", color="red", linestyle="--", label="server limit"
        )
        for label, ok in series.items():
            ax.step(range(seconds), ok, where="post", label=label)
        ax.set_xlabel("seconds")
        ax.set_ylabel("admitted requests per second")
        ax.legend(fontsize=8, loc="upper left")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        print(f"plot written to {path}")

    return draw


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--plot", metavar="FILE.png")
    args = parser.parse_args()
    result = run(Options(quick=args.quick), _plot_to(args.plot) if args.plot else None)
    print(render_text(result))

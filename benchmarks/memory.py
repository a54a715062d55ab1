"""Memory: peak RSS growth of mapping over a generator of N items, syncfetch vs the stdlib.

No network: a stub adapter mounted on ``mock://`` answers every request with a canned 200, so
what grows is the scheduling, not sockets. Each (client, N) runs in a fresh subprocess, which
reads ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux) after setting up and again
after consuming every result, and prints the difference. Clients, both on the same
``syncfetch.Session(max_concurrency=16)`` with the stub mounted: ``session.map(generator)``,
and ``ThreadPoolExecutor(16).map(session.get, generator)``, which submits every item before
yielding the first result. Sizes 10k and 100k items (2k and 20k with ``--quick``; 1M is added
with ``--full``).

Skipped, saying so, while ``syncfetch.Session`` has no ``map``.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from _report import Options, Table
from requests.adapters import BaseAdapter

import syncfetch

WORKERS = 16
KINDS = {
    "syncfetch": "session.map(generator)",
    "stdlib": "ThreadPoolExecutor(16).map(session.get, generator)",
}


class StubAdapter(BaseAdapter):
    """Answers every request with ``200 ok`` without touching the network."""

    def send(  # type: ignore[override]  # requests' adapters take their options as keywords
        self, request: requests.PreparedRequest, **kwargs: Any
    ) -> requests.Response:
        resp = requests.Response()
        resp.status_code = 200
        resp._content = b"ok"
        resp.headers["Content-Length"] = "2"
        resp.url = request.url or ""
        resp.request = request
        return resp

    def close(self) -> None:
        pass


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(kind: str, n: int) -> None:
    """Subprocess body: map over ``n`` generated items and print the peak RSS growth as JSON."""
    session = syncfetch.Session(max_concurrency=WORKERS)
    session.mount("mock://", StubAdapter())
    items = (f"mock://stub/item/{i}" for i in range(n))
    before = _rss_mb()
    start = time.perf_counter()
    ok = 0
    if kind == "syncfetch":
        ok = sum(1 for result in session.map(items) if result.ok)
    else:
        with ThreadPoolExecutor(WORKERS) as pool:
            ok = sum(1 for resp in pool.map(session.get, items) if resp.ok)
    elapsed = time.perf_counter() - start
    print(json.dumps({"ok": ok, "before": before, "after": _rss_mb(), "seconds": elapsed}))


# Linux carries a process's peak RSS across fork and exec into ru_maxrss, so a child started
# from this (large) process would report at least this process's RSS. A tiny launcher in
# between resets that floor to the launcher's own few MB.
_LAUNCHER = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"


def _measure(kind: str, n: int) -> dict[str, float]:
    child = [sys.executable, __file__, "--child", kind, str(n)]
    proc = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *child],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory child {kind} {n} failed:\n{proc.stderr}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["ok"] != n:
        raise RuntimeError(f"memory child {kind} {n}: only {result['ok']} results were ok")
    return result


def run(opts: Options) -> Table:
    sizes = [2_000, 20_000] if opts.quick else [10_000, 100_000]
    if opts.full:
        sizes.append(1_000_000)
    table = Table(
        "memory",
        "peak RSS growth mapping over a generator (stub adapter on mock://, no network)",
        ["client", *(f"{n:,} items" for n in sizes), "run s (largest)"],
    )
    if not hasattr(syncfetch.Session, "map"):
        table.skipped = "not available: syncfetch.Session has no map() yet"
        return table
    for kind, label in KINDS.items():
        results = [_measure(kind, n) for n in sizes]
        growth = [f"+{r['after'] - r['before']:.1f} MB (peak {r['after']:.0f})" for r in results]
        table.rows.append([label, *growth, f"{results[-1]['seconds']:.1f}"])
    table.notes.append("Requests are answered by a stub adapter on mock://: no network is used.")
    table.notes.append(
        "growth = ru_maxrss after consuming every result - ru_maxrss after setup (imports, "
        "session), in a fresh subprocess per cell started via a tiny launcher (Linux carries a "
        "parent's peak RSS into a child's ru_maxrss)."
    )
    return table


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--child":
    _child(sys.argv[2], int(sys.argv[3]))

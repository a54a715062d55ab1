"""Where a syncfetch call spends its time: cProfile over sequential loopback GETs.

Usage: ``python3 benchmarks/hotpath.py [N]`` (default 2000 GETs per client). Prints the
function calls per GET of plain ``requests.Session`` and of ``syncfetch.Session("100000/second")``
(deterministic, unlike timings on a shared machine), then syncfetch's own functions by
internal time. Not part of ``run.py``: it profiles, it does not benchmark.
"""

from __future__ import annotations

import cProfile
import pstats
import sys

import requests
from _servers import ServerProcess

import syncfetch


def profile(session: requests.Session, url: str, n: int) -> pstats.Stats:
    for _ in range(200):  # warm: connection open, caches filled
        session.get(url)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(n):
        session.get(url)
    profiler.disable()
    return pstats.Stats(profiler)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    with ServerProcess() as server:
        plain = profile(requests.Session(), server.url, n)
        ours = profile(syncfetch.Session("100000/second"), server.url, n)
    per_plain, per_ours = plain.total_calls / n, ours.total_calls / n  # type: ignore[attr-defined]
    print(
        f"function calls per GET: requests.Session {per_plain:.1f}, "
        f'syncfetch.Session("100000/second") {per_ours:.1f} (+{per_ours - per_plain:.1f})'
    )
    ours.sort_stats("tottime").print_stats("syncfetch", 20)


if __name__ == "__main__":
    main()

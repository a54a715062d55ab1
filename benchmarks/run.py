"""Run the syncfetch benchmarks and print one table per benchmark, then a Markdown block.

Usage: ``python3 benchmarks/run.py [--quick] [--full] [--only NAME ...] [--limit L]``.
Every ratio is computed from figures measured in this same run. A watchdog ends the run if it
ever takes far longer than designed, so it always stops by itself.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import sys
import time
from collections.abc import Callable

import adaptive
import budget
import compliance
import executor
import memory
import overhead
import timing
from _report import Options, Table, render_markdown, render_text

BENCHMARKS: dict[str, Callable[[Options], Table]] = {
    "overhead": overhead.run,
    "compliance": compliance.run,
    "executor": executor.run,
    "memory": memory.run,
    "adaptive": adaptive.run,
    "budget": budget.run,
    "latency": timing.latency,
    "busy": timing.busy,
    "demo": timing.demo,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter run (about 4 minutes)")
    parser.add_argument("--full", action="store_true", help="also run the 1M-item memory case")
    parser.add_argument(
        "--only", action="append", choices=sorted(BENCHMARKS), help="run only this benchmark"
    )
    parser.add_argument("--limit", type=int, default=100, help="server limit L/s for compliance")
    args = parser.parse_args(argv)
    if args.limit < 1:
        parser.error("--limit must be at least 1")
    opts = Options(quick=args.quick, full=args.full, limit=args.limit)
    # Designed for < 4 min (quick) and < 10 min; the 1M-item memory case adds several minutes.
    faulthandler.dump_traceback_later(3600 if args.full else 1200, exit=True)
    cores = os.cpu_count() or 1
    if hasattr(os, "getloadavg") and os.getloadavg()[0] > cores / 2:
        print(
            f"WARNING: load average {os.getloadavg()[0]:.2f} on {cores} cores: other work is "
            "running, so timings will be noisy and ratios unreliable.\n",
            flush=True,
        )
    tables: list[Table] = []
    for name in args.only or list(BENCHMARKS):
        start = time.monotonic()
        table = BENCHMARKS[name](opts)
        print(render_text(table))
        print(f"    ({name} took {time.monotonic() - start:.1f} s)\n", flush=True)
        tables.append(table)
    print("Markdown (paste into a README):\n")
    print("```markdown")
    print(render_markdown(tables), end="")
    print("```")
    return 0


if __name__ == "__main__":
    sys.exit(main())

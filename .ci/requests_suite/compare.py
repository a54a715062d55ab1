"""Run requests' own test suite with plain requests and with syncfetch swapped in; compare.

Usage: python compare.py SUITE_DIR [pytest args...]

Exits 1 when a test that passes with ``requests.Session`` fails with
``syncfetch.Session(retry=0)``. With ``SYNCFETCH_SWAP_MODES="retry0 default"`` the run with
default settings is reported too, not judged: README.md lists the tests that differ there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent


def outcomes(suite: Path, mode: str, extra: list[str]) -> dict[str, str]:
    """Run the suite once in ``mode``; return test id -> passed/failed/skipped."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        env = {
            **os.environ,
            "SYNCFETCH_SWAP": mode,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        }
        cmd = [sys.executable, "-m", "pytest", "tests", "-q", "-p", "syncfetch_swap"]
        cmd += ["-p", "no:cacheprovider", f"--junitxml={report}", *extra]
        proc = subprocess.run(cmd, cwd=suite, env=env, capture_output=True, text=True)
        tail = proc.stdout.strip().splitlines()[-1:] or ["(no output)"]
        print(f"{mode:>8}: {tail[0]}", flush=True)
        if not report.exists():
            sys.exit(f"pytest wrote no report in mode {mode}:\n{proc.stdout}\n{proc.stderr}")
        result: dict[str, str] = {}
        for case in ET.parse(report).iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            kinds = {child.tag for child in case}
            if kinds & {"failure", "error"}:
                result[name] = "failed"
            elif "skipped" in kinds:
                result[name] = "skipped"
            else:
                result[name] = "passed"
        return result


def main() -> int:
    suite = Path(sys.argv[1])
    extra = sys.argv[2:]
    plain = outcomes(suite, "off", extra)
    passed = {name for name, outcome in plain.items() if outcome == "passed"}
    status = 0
    for mode in os.environ.get("SYNCFETCH_SWAP_MODES", "retry0").split():
        swapped = outcomes(suite, mode, extra)
        lost = sorted(name for name in passed if swapped.get(name) != "passed")
        print(f"{mode:>8}: {len(passed) - len(lost)}/{len(passed)} of the baseline's passes hold")
        for name in lost:
            print(f"          differs: {name}")
        if mode == "retry0" and lost:
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())

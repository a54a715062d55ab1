"""Python child processes for tests that signal them, with a stack dump if one hangs.

The child handles SIGINT as Python does at a terminal, whatever the test run inherited.

The child registers :mod:`faulthandler` on SIGUSR1. :func:`finish` waits for it; if it
does not exit in time, it asks for every thread's stack, kills it, and fails the test
with that dump, so an intermittent hang says where it hung.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

# A shell without job control starts background commands with SIGINT ignored, and a
# child inherits that: a pytest started with ``cmd &`` from a script would give the
# children a SIGINT they ignore. The tests stand for a user at a terminal, so the
# child takes Python's own handler back.
_PRELUDE = (
    "import faulthandler, signal, sys; "
    "signal.signal(signal.SIGINT, signal.default_int_handler); "
    "faulthandler.register(signal.SIGUSR1, all_threads=True); "
)


def python(*args: str, module: str | None = None, code: str | None = None) -> subprocess.Popen[str]:
    """Start ``python -m module args`` or ``python -c code args``, pipes in text mode."""
    if module is not None:
        body = (
            f"sys.argv = [{module!r}, *sys.argv[1:]]; import runpy; "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
        )
    elif code is not None:
        body = f"exec(compile({code!r}, '<child>', 'exec'))"
    else:
        raise TypeError("module or code")
    return subprocess.Popen(
        [sys.executable, "-c", _PRELUDE + body, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """Wait for ``proc``; on a hang, fail with the child's thread stacks."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        masks = _signal_masks(proc.pid)
        proc.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(
            f"child did not exit within {timeout} s; its signal masks: {masks}; its stacks:\n"
            f"{err}\n--- stdout:\n{out[-2000:]}"
        )


def _signal_masks(pid: int) -> str:
    """The kernel's view of a process's signals (Linux): pending, blocked, ignored, caught."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return " ".join(
                line.strip()
                for line in f
                if line.startswith(("ShdPnd", "SigPnd", "SigBlk", "SigIgn", "SigCgt"))
            )
    except OSError:
        return "(not readable)"

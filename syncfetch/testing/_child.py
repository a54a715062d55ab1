"""A :class:`FakeServer` in a process of its own, driven over a pipe."""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._server import FakeServer

# A fake provider outlives no test run: it stops by itself after this long, or when its
# parent dies.
MAX_LIFE = 3600.0


def _child(factory: Callable[[], FakeServer], conn: Connection, parent: int) -> None:
    """Child process body: serve and answer commands until told to stop (or orphaned)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us in its finally
    server = factory()
    # What the imports left is never garbage: keep the collector's pauses (which hold up the
    # stamping of arrivals) to what serving allocates.
    gc.freeze()
    server.start()
    conn.send(server.port)
    end = time.monotonic() + MAX_LIFE
    with contextlib.suppress(EOFError, OSError):
        while os.getppid() == parent and time.monotonic() < end:
            if not conn.poll(0.2):
                continue
            name, args = conn.recv()
            if name == "stop":
                break
            try:
                conn.send((True, server.command(name, *args)))
            except (TypeError, ValueError) as exc:
                conn.send((False, exc))
    server.stop()


class ServerChild:
    """A :class:`FakeServer` in a process of its own (``spawn``), driven over a pipe.

    A server in the client's process stamps arrivals when its handler thread gets the GIL,
    which the client's threads hold: late by a delay no client can see. This one has its
    own GIL. It stops with its parent, or after :data:`MAX_LIFE` seconds.

    :param factory: builds the server in the child (picklable: a class, a
        ``functools.partial``, a module-level function).
    """

    def __init__(self, factory: Callable[[], FakeServer]) -> None:
        self.factory = factory
        self.port = 0
        # _lock guards the pipe: one command and its answer at a time.
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._proc: BaseProcess | None = None

    def start(self) -> int:
        """Start the child and return its port.

        :raises RuntimeError: when it does not come up within 30 s.
        """
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(
            target=_child,
            args=(self.factory, child_conn, os.getpid()),
            daemon=True,
            name="fake-api",
        )
        try:
            self._proc.start()
            child_conn.close()
            if not self._conn.poll(30):
                raise EOFError
            self.port = int(self._conn.recv())
        except (EOFError, OSError):
            self.stop()
            raise RuntimeError("the fake API did not start within 30 s") from None
        except BaseException:
            self.stop()
            raise
        return self.port

    def call(self, name: str, *args: Any) -> Any:
        """Run ``server.command(name, *args)`` in the child and return its answer.

        :raises RuntimeError: when the child is gone or does not answer within 30 s.
        """
        with self._lock:
            if self._conn is None:
                raise RuntimeError("the fake API is not running")
            try:
                self._conn.send((name, args))
                if not self._conn.poll(30):
                    raise EOFError
                ok, value = self._conn.recv()
            except (EOFError, OSError):
                raise RuntimeError("the fake API's process ended") from None
        if not ok:
            raise value
        return value

    def stop(self) -> None:
        """Stop the child (idempotent)."""
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(EOFError, OSError):
                    self._conn.send(("stop", ()))
            if self._proc is not None and self._proc.pid is not None:  # (it started)
                self._proc.join(5)
                if self._proc.is_alive():
                    self._proc.terminate()
                    self._proc.join(5)
            self._proc = None
            if self._conn is not None:
                self._conn.close()
                self._conn = None

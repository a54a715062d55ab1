"""A throwaway ``redis-server`` on a free loopback port, for tests (no persistence).

Typical use::

    with RedisServer() as srv:
        url = srv.url          # redis://127.0.0.1:PORT/0
        srv.restart()          # same port, data lost (no RDB, no AOF)

``require_redis()`` skips the calling test when ``redis-server`` or the ``redis``
package is missing, except on CI (``CI=true``), where it fails instead: CI must run
these tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from types import TracebackType

import pytest

__all__ = ["RedisServer", "require_redis"]


def require_redis() -> str:
    """Return the path of ``redis-server``; skip (or fail on CI) if it or redis-py is missing."""
    binary = shutil.which("redis-server")
    try:
        import redis  # noqa: F401
    except ImportError:
        missing = "the redis package (pip install 'syncfetch[redis]')"
    else:
        missing = "" if binary else "redis-server (apt-get install -y redis-server)"
    if missing:
        message = f"needs {missing}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message}: CI must run the Redis tests")
        pytest.skip(message)
    assert binary is not None
    return binary


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process bound to 127.0.0.1, with nothing saved to disk."""

    def __init__(self, port: int | None = None) -> None:
        self.binary = require_redis()
        self.port = port or _free_port()
        self._dir = tempfile.mkdtemp(prefix="syncfetch-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 5.0) -> RedisServer:
        """Start the server and wait until it answers PING."""
        if self._proc is not None:
            raise RuntimeError("redis-server already running")
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir,
                "--protected-mode",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        end = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return self
            if time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s). Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def restart(self, down_for: float = 0.0) -> None:
        """Stop, stay down ``down_for`` seconds, start again on the same port (data lost)."""
        self.stop()
        time.sleep(down_for)
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

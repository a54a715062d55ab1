"""The limit stores, and choosing one from :class:`Session`'s ``store`` argument.

One protocol (``base``: ``Limiter``, tokens, charges); the store of one process
(``memory``); what the shared stores have in common (``shared``: the backend-failure
policy, the fallback, fork hooks); the stores shared by the processes of one machine
(``sqlite``) and of many (``redis``, with ``redis_cluster`` and ``redis_urls``).
"""

from __future__ import annotations

from typing import Any

from pyrate_limiter import Rate

from .base import DEFAULT_ARRIVAL, Limiter
from .memory import KeyedLimiter

BACKEND_FORMS = (
    '"memory", "sqlite:///path/to/limits.db", "redis://host:port/db" '
    '(also rediss:// and unix://), "redis+cluster://host:port[,host:port]", '
    '"redis+sentinel://host:port/service_name" (also rediss+...), '
    "or a redis.Redis or redis.cluster.RedisCluster client"
)

ON_BACKEND_ERROR = ("raise", "fallback")
CLUSTER_PREFIXES = ("redis+cluster://", "rediss+cluster://")  # scale (issue 16)
SENTINEL_PREFIXES = ("redis+sentinel://", "rediss+sentinel://")


def make_limiter(
    backend: Any,
    rates: list[Rate],
    *,
    margin: float,
    on_backend_error: str,
    arrival: float = DEFAULT_ARRIVAL,
) -> Limiter:
    """Build the limiter for a backend spec.

    :param backend: see :data:`BACKEND_FORMS`.
    :param rates: the session's binding rates (possibly empty: pauses only).
    :param margin: seconds added to every window of the shared backends (their clock
        rounding; the in-memory limiter's dates are not rounded).
    :param arrival: seconds after a request leaves by which the server counts it.
    :param on_backend_error: ``"raise"`` (a call fails with ``BackendUnavailable``
        while the backend is unreachable) or ``"fallback"`` (limit per process in
        memory meanwhile, with a warning).
    :raises ValueError: for an unknown backend or policy, naming it.
    """
    if on_backend_error not in ON_BACKEND_ERROR:
        raise ValueError(
            f"on_backend_error must be one of {ON_BACKEND_ERROR}, not {on_backend_error!r}"
        )
    if backend is None or backend == "memory":
        # Its token dates are exact floats, not rounded ms: no margin to cover.
        return KeyedLimiter(rates, arrival=arrival)
    if isinstance(backend, str) and backend.startswith("sqlite:///"):
        from .sqlite import SQLiteLimiter

        return SQLiteLimiter(
            backend[len("sqlite:///") :],
            rates,
            margin=margin,
            arrival=arrival,
            on_backend_error=on_backend_error,
        )
    # scale (issue 16): Redis Cluster gets hash-tagged keys; Sentinel URLs a RedisLimiter.
    cluster_url = isinstance(backend, str) and backend.startswith(CLUSTER_PREFIXES)
    if cluster_url or type(backend).__name__ == "RedisCluster":
        from .redis_cluster import RedisClusterLimiter

        return RedisClusterLimiter(
            backend, rates, margin=margin, arrival=arrival, on_backend_error=on_backend_error
        )
    if isinstance(backend, str) and backend.startswith(
        ("redis://", "rediss://", "unix://", *SENTINEL_PREFIXES)
    ):
        from .redis import RedisLimiter

        return RedisLimiter(
            backend,
            rates,
            margin=margin,
            arrival=arrival,
            on_backend_error=on_backend_error,
        )
    if type(backend).__module__.startswith("redis"):
        from .redis import RedisLimiter

        return RedisLimiter(
            backend,
            rates,
            margin=margin,
            arrival=arrival,
            on_backend_error=on_backend_error,
        )
    raise ValueError(f"unknown backend {backend!r}: expected {BACKEND_FORMS}")

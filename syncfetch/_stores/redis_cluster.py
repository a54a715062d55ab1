"""The Redis limiter on a Redis Cluster: every script's keys in one hash slot.

A cluster runs a script only if all its keys hash to one slot (else ``CROSSSLOT``).
Each bucket key carries a hash tag, ``{N}``, where N (0..GROUPS-1) comes from the
bucket's digest: the bucket's sorted set, pause, horizon and queue keys share it, and
so do the epoch and quarantine keys of its group (``prefix:{N}:epoch``), which the
single-server layout keeps once per server. Buckets spread over GROUPS tags, so over
the slots of every master; each bucket lives on one master, which every process asks,
so its limit holds across the cluster. There are at most GROUPS epoch keys (no TTL);
every other key expires a window after its last use, as on one server.

A call charging several buckets (routes, costs) runs one script over all of them: a
route's bucket carries its origin's tag. A call over several slots (a session-wide
``"*"`` bucket with an origin's routes) takes slot by slot (see ``RedisLimiter``).

A failover of the master holding a bucket (its replica promoted) is seen by redis-py as
connection errors, then ``MOVED`` replies, on which it reloads the slot map: calls in
between fail with ``BackendUnavailable`` (or take the per-process fallback). The data
replicated by then (the epoch, the tokens) carries over, so the limit holds after it.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator, Sequence

import redis
from redis.exceptions import RedisClusterException

from .base import Charge, Token
from .redis import _UNSAFE, RedisLimiter

GROUPS = 1024

# The origin of a route's bucket key ("[METHOD ]scheme://host[:port][/path...]", see
# RouteTable.match).
_ORIGIN_OF = re.compile(r"(?:[A-Z]+ )?([A-Za-z][A-Za-z0-9+.-]*://[^/?#\s]*)")


@contextlib.contextmanager
def _cluster_errors() -> Iterator[None]:
    """redis-py's ``RedisClusterException`` (no nodes reachable, slots not covered) is
    not a ``RedisError``: make it one, so it means "backend down" like the others."""
    try:
        yield
    except RedisClusterException as exc:
        raise redis.ConnectionError(f"Redis Cluster: {exc}") from None


class RedisClusterLimiter(RedisLimiter):
    """:class:`RedisLimiter` with hash-tagged keys, for ``redis+cluster://`` URLs and
    ``redis.cluster.RedisCluster`` clients (same parameters)."""

    def __repr__(self) -> str:
        return f"RedisClusterLimiter({self.name!r}, {[str(r) for r in self.rates]})"

    def key_for(self, key: str) -> str:
        """``prefix:{N}:readable:digest``: the ``{N}`` hash tag puts every key of the
        bucket (and of its group's epoch) in one slot. ``_UNSAFE`` removes braces from
        the readable part, so the first ``{...}`` is always the tag.

        N comes from the digest of the key's origin (``scheme://host:port``, the whole
        key for an origin's own bucket), so a route's buckets (``POST
        https://a.test:443/x``) share their origin's slot, and a call's charges take in
        one script."""
        digest = hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        origin = _ORIGIN_OF.match(key)
        tag = digest
        if origin is not None and origin.group(1) != key:
            tag = hashlib.sha1(origin.group(1).encode("utf-8", "surrogatepass")).hexdigest()
        group = int(tag[:8], 16) % GROUPS
        return f"{self.prefix}:{{{group}}}:{_UNSAFE.sub('_', key)[:64]}:{digest}"

    def _scope(self, zkey: str) -> str:
        # "prefix:{N}" of "prefix:{N}:readable:digest" (the prefix may contain ":").
        return zkey[: zkey.index("}", len(self.prefix)) + 1]

    def _take(self, key: str, deadline: float | None, start: float) -> Token:
        with _cluster_errors():
            return super()._take(key, deadline, start)

    def _settle(self, token: Token) -> None:
        with _cluster_errors():
            super()._settle(token)

    def _sent(self, token: Token) -> None:
        with _cluster_errors():
            super()._sent(token)

    def _pause(self, key: str, seconds: float) -> None:
        with _cluster_errors():
            super()._pause(key, seconds)

    def _replay(self, ages: list[tuple[str, int, int]]) -> None:
        with _cluster_errors():
            super()._replay(ages)

    def _paused_for(self, key: str) -> float:
        with _cluster_errors():
            return super()._paused_for(key)

    def _take_many(
        self,
        key: str,
        charges: Sequence[Charge],
        deadline: float | None,
        start: float,
        priority: int,
    ) -> Token:
        with _cluster_errors():
            return super()._take_many(key, charges, deadline, start, priority)

    def _correct(self, token: Token, key: str, cost: int) -> None:
        with _cluster_errors():
            super()._correct(token, key, cost)

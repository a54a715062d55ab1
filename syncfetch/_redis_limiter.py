"""Sliding-window limits shared by processes on many machines, kept in Redis.

Needs the ``redis`` extra (``pip install syncfetch[redis]``).

pyrate-limiter's ``RedisBucket`` is not used. Measured (field notes): it caches its
Lua script's SHA and raises ``NoScriptError`` on every call after a Redis restart or
``SCRIPT FLUSH``; its keys have no TTL, so every host ever seen stays in Redis; its
backend errors come straight through; and it reads each client's own clock. Here:

- one sorted set per bucket key (unique members, ms scores), checked and added to by
  one Lua script run through redis-py's ``register_script``, whose ``Script`` object
  reloads the script on ``NoScriptError``;
- the script dates tokens with ``redis.call('TIME')``, the one clock every machine
  shares, so clients with skewed clocks still agree;
- every write sets ``PEXPIRE`` to the longest window (plus the settle cap), so idle
  keys disappear;
- a pause is a key with a ``PX`` expiry, seen by every process;
- waiters queue with tickets, as in the SQLite limiter. Measured with 4 processes x
  8 threads at 40/s: 1.7-1.9 script calls per token instead of 5-9 (without it every
  waiter wakes for the same place, so the calls grow with the number of waiters);
  fairness is good either way (worst process 0.79-0.97 of an equal share with the
  queue, 0.78-0.98 without);
- a Redis that lost its data (restart without persistence, ``FLUSHALL``) while
  processes were taking tokens is detected, and nobody takes a token until the
  forgotten ones would have left their windows (see ``_ACQUIRE``).

Needs Redis >= 5 (scripts replicated by effects, so ``TIME`` may precede writes);
tested with 7.0. Redis Cluster: ``_redis_cluster.RedisClusterLimiter`` (hash tags);
Sentinel: a ``redis+sentinel://`` URL (``_redis_urls``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import re
import time
from typing import Any

import redis
from pyrate_limiter import Rate
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ._limiter import DEFAULT_ARRIVAL, Token
from ._redact import safe_url
from ._redis_urls import PREFIXES, close_client, describe_client, make_client
from ._shared_limiter import (
    BACKEND_DEADLINE,
    TICKET_GRACE_MS,
    UNSETTLED_MAX,
    SharedLimiter,
    raise_if_late,
)

# KEYS: 1 the bucket's sorted set, 2 its pause, 3 its horizon, 4 the epoch, 5 the
#       quarantine, 6 the bucket's queue (waiter -> ticket), 7 the queue's expiries
#       (waiter -> ms), 8 the ticket counter, 9 the bucket's unsettled tokens (member ->
#       hold: its take + UNSETTLED_MAX, in ms).
# ARGV: 1 a new unique member, 2 this process's longest window (ms), 3 the settle cap (ms),
#       4 a new epoch id, 5 the epoch this process last saw ('' if none), 6 the waiter id
#       ('' for no queue), 7 ms left before the caller's deadline (-1 for none),
#       8 UNSETTLED_MAX (ms), 9.. limit, interval (ms) pairs.
# Returns {taken (0/1), ms to wait, server time (ms), epoch}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.ceil(tonumber(t[2]) / 1000)
local horizon = tonumber(ARGV[2])
-- The epoch key (no TTL) marks the data set. If it is gone, the data is gone with it:
-- start a new epoch, dated. A process that saw another epoch took tokens this server
-- has forgotten, no later than that date: hold every key until they have left their
-- windows (those of the longest window among the processes that notice).
local epoch = redis.call('GET', KEYS[4])
if not epoch then
  epoch = ARGV[4] .. ':' .. string.format('%d', now)
  redis.call('SET', KEYS[4], epoch)
end
if ARGV[5] ~= '' and ARGV[5] ~= epoch then
  local left = tonumber(string.match(epoch, ':(%d+)$')) + horizon - now
  if left > redis.call('PTTL', KEYS[5]) then
    redis.call('SET', KEYS[5], '1', 'PX', left)
  end
end
local wait = math.max(redis.call('PTTL', KEYS[5]), redis.call('PTTL', KEYS[2]), 0)
-- Another process may keep this key with a longer window: trim and expire by the
-- longest one seen, so nobody deletes entries another still counts.
local known = tonumber(redis.call('GET', KEYS[3]) or '0')
if known > horizon then horizon = known end
-- A token taken but not settled is in KEYS[9], not in KEYS[1], and counts as taken now
-- (its request may not have left yet) until settled, or until its hold: a process that
-- died holding it stops blocking its place then, the token dated at its hold.
local late = redis.call('ZRANGEBYSCORE', KEYS[9], '-inf', now, 'WITHSCORES')
for i = 1, #late, 2 do
  redis.call('ZREM', KEYS[9], late[i])
  local hold = tonumber(late[i + 1])
  if hold > now - horizon then
    redis.call('ZADD', KEYS[1], late[i + 1], late[i])
    local keep = hold + horizon - now
    if redis.call('PTTL', KEYS[1]) < keep then redis.call('PEXPIRE', KEYS[1], keep) end
  end
end
local unsettled = redis.call('ZCARD', KEYS[9])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now - horizon))
-- The queue: waiters ahead of this one (older tickets) take the first free places.
-- A ticket not refreshed by its planned wake-up plus a grace is presumed dead.
local waiter = ARGV[6]
local ahead = 0
local ticket = false
if waiter ~= '' then
  for _, dead in ipairs(redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', now)) do
    redis.call('ZREM', KEYS[6], dead)
    redis.call('ZREM', KEYS[7], dead)
  end
  ticket = redis.call('ZSCORE', KEYS[6], waiter)
  if ticket then
    ahead = redis.call('ZCOUNT', KEYS[6], '-inf', '(' .. ticket)
  else
    ahead = redis.call('ZCARD', KEYS[6])
  end
end
if wait <= 0 then
  -- Entries dated after now (settled a ms ahead, rounding) come before the unsettled.
  local ahead_of_now = 0
  if unsettled > 0 then
    ahead_of_now = redis.call('ZCOUNT', KEYS[1], string.format('(%d', now), '+inf')
  end
  for i = 9, #ARGV, 2 do
    local limit, interval = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
    -- Free places come as entries leave the window (now - interval, now], oldest
    -- first; the waiters ahead take the first ones. With fewer than limit ahead, this
    -- waiter needs the (limit - ahead)-th newest entry gone: exact. With more, places
    -- their tokens free a window later: an estimate, checked again on waking. The
    -- unsettled tokens, all dated now, rank after the entries dated later than now.
    local rounds, nth = math.floor(ahead / limit), ahead % limit
    local k = limit - 1 - nth
    local free_at = now
    if k >= ahead_of_now and k < ahead_of_now + unsettled then
      free_at = now + interval
    else
      if k >= ahead_of_now then k = k - unsettled end
      local e = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf',
        string.format('(%d', now - interval), 'WITHSCORES', 'LIMIT', k, 1)
      if e[2] then free_at = tonumber(e[2]) + interval end
    end
    wait = math.max(wait, free_at + rounds * interval - now)
  end
end
-- settle may move an entry up to the cap later without touching the TTL, so the keys
-- must outlive the newest possible score by a window, or the set could vanish with
-- entries that still count.
local ttl = horizon + tonumber(ARGV[3])
if wait <= 0 then
  local hold = now + tonumber(ARGV[8])
  redis.call('ZADD', KEYS[9], string.format('%d', hold), ARGV[1])
  redis.call('PEXPIRE', KEYS[9], hold - now + ttl)
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('SET', KEYS[3], string.format('%d', horizon), 'PX', ttl)
  if ticket then
    redis.call('ZREM', KEYS[6], waiter)
    redis.call('ZREM', KEYS[7], waiter)
  end
  return {1, 0, now, epoch}
end
if waiter ~= '' then
  local budget = tonumber(ARGV[7])
  if budget >= 0 and wait > budget then
    -- The caller gives up at once (RateLimitExceeded): leave the queue.
    redis.call('ZREM', KEYS[6], waiter)
    redis.call('ZREM', KEYS[7], waiter)
  else
    if not ticket then
      redis.call('ZADD', KEYS[6], redis.call('INCR', KEYS[8]), waiter)
    end
    redis.call('ZADD', KEYS[7], string.format('%d', now + wait + GRACE_MS), waiter)
    local qttl = math.max(ttl, wait + GRACE_MS)
    redis.call('PEXPIRE', KEYS[6], qttl)
    redis.call('PEXPIRE', KEYS[7], qttl)
    redis.call('PEXPIRE', KEYS[8], qttl)
  end
end
return {0, wait, now, epoch}
"""
_ACQUIRE = _ACQUIRE.replace("GRACE_MS", str(TICKET_GRACE_MS))

# KEYS: 1 the pause key. ARGV: 1 ms. Extends the pause, never shortens it.
_PAUSE = """
local ms = tonumber(ARGV[1])
if ms > redis.call('PTTL', KEYS[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ms)
end
return 0
"""

# KEYS: the sorted sets. ARGV: 1 ttl (ms), then one age (ms) per key. Adds one entry per
# key, dated that long before the server's now (tokens taken while Redis was away).
_REPLAY = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.ceil(tonumber(t[2]) / 1000)
for i, zkey in ipairs(KEYS) do
  local member = 'replay:' .. string.format('%d', now) .. ':' .. i .. ':' .. ARGV[1 + i]
  redis.call('ZADD', zkey, string.format('%d', now - tonumber(ARGV[1 + i])), member)
  redis.call('PEXPIRE', zkey, tonumber(ARGV[1]))
end
return 0
"""

# KEYS: 1 the bucket's sorted set, 2 its unsettled tokens. ARGV: 1 the new score (ms),
# 2 the member, 3 this process's longest window (ms). Moves the token from the unsettled
# to the set, dated; or moves an entry already there (past its hold) that still exists
# (never re-adds a trimmed one). Keeps the set alive until the entry has left every window.
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.ceil(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1]) + tonumber(ARGV[3]) - now
if redis.call('ZREM', KEYS[2], ARGV[2]) == 1 then
  if ttl <= 0 then return 0 end
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
elseif redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[1], ARGV[2]) == 0 then
  return 0
end
local pttl = redis.call('PTTL', KEYS[1])
if ttl > 0 and (pttl == -1 or pttl < ttl) then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"""

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

# Default timeouts of a client built from a URL (seconds); a caller with less time left
# (max_wait, deadline) shortens them for its own commands, down to _MIN_TIMEOUT: a reply
# was measured reaching its thread 33 ms late on 2 busy cores (see _take), and a healthy
# Redis must not look down to a caller with max_wait=0.
_CONNECT_TIMEOUT = 1.0
_SOCKET_TIMEOUT = 2.0
_MIN_TIMEOUT = 0.25


def _shorter(timeout: float | None, left: float) -> float:
    return left if timeout is None else min(timeout, left)


def _bounded(base: type[Any]) -> type[Any]:
    """A subclass of redis-py connection class ``base`` whose commands are bounded by
    the caller's time left (:data:`BACKEND_DEADLINE`): connect and socket timeouts
    shrink to it (never under ``_MIN_TIMEOUT``), so a Redis that accepts connections
    but never answers holds a call no longer than its ``max_wait`` or deadline."""

    class Bounded(base):  # type: ignore[misc, valid-type]
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            conn: Any = self  # redis-py is untyped
            bound = BACKEND_DEADLINE.get()
            if bound is None or bound == math.inf:
                if conn._sock is not None:
                    conn._sock.settimeout(conn.socket_timeout)
                super().send_packed_command(command, check_health)
                return
            if conn._sock is None:
                left = max(bound - time.monotonic(), _MIN_TIMEOUT)
                saved = (conn.socket_connect_timeout, conn.socket_timeout)
                conn.socket_connect_timeout = _shorter(saved[0], left)
                conn.socket_timeout = _shorter(saved[1], left)
                try:
                    conn.connect()
                finally:
                    conn.socket_connect_timeout, conn.socket_timeout = saved
            left = max(bound - time.monotonic(), _MIN_TIMEOUT)
            conn._sock.settimeout(_shorter(conn.socket_timeout, left))
            super().send_packed_command(command, check_health)

    Bounded.__name__ = Bounded.__qualname__ = f"Bounded{base.__name__}"
    return Bounded


@dataclasses.dataclass
class _Member:
    """Handle of a token in a bucket's sorted set (used by the one thread holding it)."""

    zkey: str
    member: str
    score: int  # server time (ms) when taken
    taken_at: float  # time.monotonic() just before the script call that took it
    dated: int | None = None  # its score since dated by the send (_sent)


class RedisLimiter(SharedLimiter):
    """Per-key sliding-window log in Redis, shared by processes on any number of machines.

    Each acquire is one script call, atomic on the server. A thread that must wait
    sleeps without any lock for exactly as long as the oldest blocking entry needs
    to leave its window (as measured on the server's clock), then calls again.
    Waiting threads hold tickets in a per-key queue, as in the SQLite limiter.

    :param url_or_client: ``redis://host:port/db`` (also ``rediss://``, ``unix://``),
        or a ``redis.Redis`` client (used as configured, and not closed by :meth:`close`).
    :param rates: binding rates, as returned by ``normalize_limits``.
    :param margin: seconds added to every window.
    :param arrival: seconds after a send by which the server counts it (see
        ``KeyedLimiter``).
    :param on_backend_error: ``"raise"`` or ``"fallback"`` (see ``SharedLimiter``).
    :param unsettled_max: seconds a token not yet settled counts as taken now, for every
        process (``UNSETTLED_MAX``; a bound for processes that die holding one).
    :param prefix: first part of every key this limiter writes.
    :param fair: use the ticket queue; ``False`` only to measure what it is for.
    """

    def __init__(
        self,
        url_or_client: str | redis.Redis,
        rates: list[Rate],
        *,
        margin: float = 0.0,
        on_backend_error: str = "raise",
        arrival: float = DEFAULT_ARRIVAL,
        unsettled_max: float = UNSETTLED_MAX,
        prefix: str = "syncfetch",
        fair: bool = True,
    ) -> None:
        # scale (issue 16): cluster and sentinel URLs build their own client.
        built = url_or_client if isinstance(url_or_client, str) else ""
        if built.startswith(PREFIXES):
            url_or_client = make_client(built)
        else:
            built = ""
        if isinstance(url_or_client, str):
            # Fail fast while Redis is down: redis-py's default is 10 retries with
            # backoff, seconds per call. One retry is kept, on connection errors only:
            # after a Redis restart the pooled connection is dead and the retry
            # reconnects; a timeout is not retried (a hung Redis would double it).
            pool = redis.ConnectionPool.from_url(
                url_or_client,
                socket_connect_timeout=_CONNECT_TIMEOUT,
                socket_timeout=_SOCKET_TIMEOUT,
                retry=Retry(
                    ExponentialBackoff(cap=0.05, base=0.01),
                    1,
                    supported_errors=(redis.ConnectionError,),
                ),
            )
            pool.connection_class = _bounded(pool.connection_class)
            client = redis.Redis(connection_pool=pool)
            client.auto_close_connection_pool = True
            name = safe_url(url_or_client)
            self._owns_client = True
        else:
            client = url_or_client
            name = safe_url(built) if built else describe_client(client)  # scale (issue 16)
            self._owns_client = bool(built)
        super().__init__(
            rates,
            margin=margin,
            arrival=arrival,
            on_backend_error=on_backend_error,
            name=name,
            # ValueError: redis-py reading a socket that close() shut under it
            # ("I/O operation on closed file").
            errors=(redis.RedisError, OSError, ValueError),
            unsettled_max=unsettled_max,
        )
        self.client = client
        self.prefix = prefix
        self.fair = fair
        self._acquire_script = client.register_script(_ACQUIRE)
        self._pause_script = client.register_script(_PAUSE)
        self._replay_script = client.register_script(_REPLAY)
        self._settle_script = client.register_script(_SETTLE)
        self._rate_args = [n for r in self.rates for n in (r.limit, r.interval)]
        # The epoch of the data set this process last saw (see _ACQUIRE), per scope (one
        # here, one per hash-tag group on a cluster). A str is replaced whole and a dict
        # item set in one step, so threads need no lock to read or write them.
        self._epochs: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"RedisLimiter({self.name!r}, {[str(r) for r in self.rates]})"

    def key_for(self, key: str) -> str:
        """The sorted set of bucket ``key``: a readable part, then a hash of the whole key,
        so any host name (any length, any bytes) makes a distinct, safe key."""
        digest = hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        return f"{self.prefix}:{_UNSAFE.sub('_', key)[:64]}:{digest}"

    def _scope(self, zkey: str) -> str:
        """Prefix of the epoch and quarantine keys guarding bucket ``zkey``: one pair per
        server here, one per hash-tag group on a cluster (every key a script touches must
        be in one hash slot there)."""
        return self.prefix

    def _take(self, key: str, deadline: float | None, start: float) -> Token:
        zkey = self.key_for(key)
        scope = self._scope(zkey)
        keys = [
            zkey,
            zkey + ":pause",
            zkey + ":h",
            scope + ":epoch",
            scope + ":quarantine",
            zkey + ":q",
            zkey + ":qexp",
            zkey + ":qseq",
            zkey + ":u",
        ]
        # One id for this caller's place in the queue, kept while it waits. os.urandom:
        # unique across processes and machines, and fork-safe.
        waiter = os.urandom(8).hex() if self.fair else ""
        queued = False
        try:
            while True:
                member = os.urandom(8).hex()
                budget = (
                    -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
                )
                # Before the call, not after: the server reads its clock between the two,
                # and the reply may reach this thread many ms later (measured: 33 ms on 2
                # busy cores), which would date the settled entry that much too early.
                sent = time.monotonic()
                reply: Any = self._acquire_script(
                    keys,
                    [
                        member,
                        self._horizon_ms,
                        self._settle_cap_ms,
                        os.urandom(8).hex(),
                        self._epochs.get(scope, ""),
                        waiter,
                        budget,
                        self._unsettled_ms,
                        *self._rate_args,
                    ],
                )
                taken, wait, now, epoch = int(reply[0]), int(reply[1]), int(reply[2]), reply[3]
                self._epochs[scope] = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
                if taken:
                    return Token(key, _Member(zkey, member, now, sent), time.monotonic() - start)
                queued = bool(waiter)
                raise_if_late(key, wait, deadline)
                self.sleep(wait / 1000)
        except BaseException:
            if queued:
                # Best effort (the script already left the queue on a deadline; an
                # abandoned ticket otherwise expires by itself).
                with contextlib.suppress(redis.RedisError, OSError, ValueError):
                    self.client.zrem(keys[5], waiter)
                    self.client.zrem(keys[6], waiter)
            raise

    def _sent(self, token: Token) -> None:
        handle: _Member = token.handle
        self._date(handle, self._sent_time(token, handle.score, handle.taken_at))

    def _settle(self, token: Token) -> None:
        handle: _Member = token.handle
        new = self._settled_time(token, handle.score, handle.taken_at)
        if handle.dated is not None and new <= handle.dated:
            return  # dated by its send already; earlier would only free its place sooner
        self._date(handle, new)

    def _date(self, handle: _Member, new: int) -> None:
        """Move the token of ``handle`` out of the unsettled, dated ``new`` (server ms)."""
        self._settle_script(
            [handle.zkey, handle.zkey + ":u"], [new, handle.member, self._horizon_ms]
        )
        handle.dated = new

    def _replay(self, ages: list[tuple[str, int, int]]) -> None:
        # One script per scope and window: on a cluster every key of a script must be in
        # one slot, and the script keeps its keys for one lifetime.
        groups: dict[tuple[str, int], list[tuple[str, int]]] = {}
        for key, age, horizon in ages:
            zkey = self.key_for(key)
            groups.setdefault((self._scope(zkey), horizon), []).append((zkey, age))
        for (_, horizon), group in groups.items():
            ttl = horizon + self._settle_cap_ms
            for i in range(0, len(group), 500):
                part = group[i : i + 500]
                self._replay_script([z for z, _ in part], [ttl, *(age for _, age in part)])

    def _pause(self, key: str, seconds: float) -> None:
        ms = max(1, round(seconds * 1000))
        self._pause_script([self.key_for(key) + ":pause"], [ms])

    def _paused_for(self, key: str) -> float:
        zkey = self.key_for(key)
        pipe = self.client.pipeline(transaction=False)
        pipe.pttl(zkey + ":pause")
        pipe.pttl(self._scope(zkey) + ":quarantine")
        return max(0, *(int(ms) for ms in pipe.execute())) / 1000

    def _reset_after_fork(self) -> None:
        # redis-py's ConnectionPool notices the new pid and drops the parent's
        # sockets by itself; the epoch seen is still right (same server).
        pass

    def _close(self) -> None:
        if self._owns_client:
            close_client(self.client)  # scale (issue 16): a sentinel client's sentinels too

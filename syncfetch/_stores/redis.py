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
- routes and costs (issue 14): one script (``_TAKE_MANY``) checks every charge of a
  call and takes all or none; a member carries its cost (``id#cost``), so a cost of
  thousands is one member; route takes wait in a queue per bucket ranked by priority,
  then arrival.
  ``python3 benchmarks/redis_routes.py`` printed on this 2-core VM (other work
  running): 74 us per uncontended acquire, 132 us per take of 3 routes, 473 us per take
  of cost 5 from a bucket of 2000+ entries (a weighted window is read whole); 1.20
  script calls per token for acquire, 1.33-1.38 for route takes (8 threads at 40/s).
  With arrival order within a priority (waiters of one priority wake one by one): 1.13
  to 1.22 for route takes in two runs, the script before it 1.27-1.35 beside them.

Needs Redis >= 5 (scripts replicated by effects, so ``TIME`` may precede writes);
tested with 7.0. Redis Cluster: ``redis_cluster.RedisClusterLimiter`` (hash tags);
Sentinel: a ``redis+sentinel://`` URL (``redis_urls``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import redis
from pyrate_limiter import Rate
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .._redact import safe_url
from .base import AGING, DEFAULT_ARRIVAL, Charge, Token
from .redis_urls import PREFIXES, close_client, describe_client, make_client
from .shared import (
    BACKEND_DEADLINE,
    TICKET_GRACE_MS,
    UNSETTLED_MAX,
    SharedLimiter,
    raise_if_late,
)

# Costs (issue 14): a member taking ``cost`` tokens other than 1 is ``id#cost``; a
# bucket holding one has a marker key (``zkey:w``) while it may count, and is then
# counted by weight (``_ROOM``); a bucket without one keeps counting with ZCOUNT.
_ROOM = """
local function weight(m)
  local w = string.match(m, '#(%d+)$')
  if w then return tonumber(w) end
  return 1
end
-- ms until (now - interval, now] of sorted set z, with the unsettled tokens of u counted
-- as now, has room for `need` more tokens (0: room now). `weighted`: z or u may hold
-- members of another weight than 1.
local function room(z, u, weighted, now, limit, interval, need)
  local low = string.format('(%d', now - interval)
  local es, flying, used = nil, 0, 0
  if weighted then
    es = redis.call('ZRANGEBYSCORE', z, low, '+inf', 'WITHSCORES')
    for _, m in ipairs(redis.call('ZRANGE', u, 0, -1)) do flying = flying + weight(m) end
    for i = 1, #es, 2 do used = used + weight(es[i]) end
  else
    flying = redis.call('ZCARD', u)
    used = redis.call('ZCOUNT', z, low, '+inf')
  end
  local over = used + flying + need - limit
  if over <= 0 then return 0 end
  -- The oldest tokens leave first: settled ones dated up to now, then the unsettled
  -- (now), then those dated after now (settled a ms ahead, rounding).
  if not weighted then
    local past = redis.call('ZCOUNT', z, low, now)
    local skip = over - 1
    if over > past then
      if over <= past + flying then return interval end
      skip = over - 1 - flying
    end
    local e = redis.call('ZRANGEBYSCORE', z, low, '+inf', 'WITHSCORES', 'LIMIT', skip, 1)
    if e[2] then return math.max(1, tonumber(e[2]) + interval - now) end
    return interval
  end
  local acc, counted = 0, (flying == 0)
  for i = 1, #es, 2 do
    local s = tonumber(es[i + 1])
    if s > now and not counted then
      counted, acc = true, acc + flying
      if acc >= over then return interval end
    end
    acc = acc + weight(es[i])
    if acc >= over then return math.max(1, s + interval - now) end
  end
  return interval
end
"""

# KEYS: 1 the bucket's sorted set, 2 its pause, 3 its horizon, 4 the epoch, 5 the
#       quarantine, 6 the bucket's queue (waiter -> ticket), 7 the queue's expiries
#       (waiter -> ms), 8 the ticket counter, 9 the bucket's unsettled tokens (member ->
#       hold: its take + UNSETTLED_MAX, in ms), 10 its cost marker (see ``_ROOM``).
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
if wait <= 0 and redis.call('EXISTS', KEYS[10]) == 1 then
  -- A bucket charged with costs: counted by weight; the waiters ahead each need one.
  for i = 9, #ARGV, 2 do
    local limit, interval = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
    local need = 1 + math.min(ahead, limit - 1)
    wait = math.max(wait, room(KEYS[1], KEYS[9], true, now, limit, interval, need))
  end
elseif wait <= 0 then
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
_ACQUIRE = _ROOM + _ACQUIRE.replace("GRACE_MS", str(TICKET_GRACE_MS))

# All or nothing over several buckets (routes, costs; issue 14): one call's charges.
# KEYS: 1 the epoch, 2 the quarantine, then per charge 7 keys: its sorted set, pause,
#       horizon, unsettled tokens, cost marker, queue (waiter#cost -> rank) and the
#       queue's expiries (waiter#cost -> ms).
# ARGV: 1 a new epoch id, 2 the epoch this process last saw, 3 the settle cap (ms),
#       4 UNSETTLED_MAX (ms), 5 a new unique id, 6 the waiter id ('' for no queue), 7 the
#       server time of the call's first look ('' on that look: now), 8 its priority, 9 ms
#       left before the caller's deadline (-1 for none), then per charge: its cost, its
#       longest window (ms), its number of windows, and that many limit, interval pairs.
# Returns {taken (0/1), ms to wait, server time (ms), epoch, the binding charge (1..)}.
#
# The queue of a bucket (waiter:priority#cost -> rank) holds the route takes waiting for
# it (not the one-token path's, which has its own), as KeyedLimiter's waiters: ranked by
# the first look's time less AGING per priority (a waiting call gains one priority per
# AGING seconds, so the rank needs no update), then arrival. The waiters ranked ahead take
# the first free places: a call sleeps until room for their costs and its own (its own
# place), as a one-token waiter does behind those ahead of it. A waiter of another
# priority holds later calls back while it waits; one of the same priority only once its
# wake-up is due (its expiry within the grace), as in the SQLite queue: room that a
# refund (correct) frees before then goes to whoever comes, instead of idling until the
# sleepers wake (a queue holding every call behind the declared costs ahead halved the
# throughput of corrected charges in tests/test_redis_routes.py).
_TAKE_MANY = (
    _ROOM
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.ceil(tonumber(t[2]) / 1000)
local cap, held = tonumber(ARGV[3]), tonumber(ARGV[4])
local waiter, budget = ARGV[6], tonumber(ARGV[9])
local rank = (tonumber(ARGV[7]) or now) - tonumber(ARGV[8]) * AGING_MS
local charges, at = {}, 10
while at <= #ARGV do
  local c = {cost = tonumber(ARGV[at]), horizon = tonumber(ARGV[at + 1]), windows = {}}
  local n = tonumber(ARGV[at + 2])
  for j = 1, n do
    c.windows[j] = {tonumber(ARGV[at + 1 + 2 * j]), tonumber(ARGV[at + 2 + 2 * j])}
  end
  local k = 2 + 7 * #charges
  c.z, c.pause, c.h, c.u, c.w = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5]
  c.q, c.qexp = KEYS[k + 6], KEYS[k + 7]
  c.me = waiter .. ':' .. ARGV[8] .. '#' .. string.format('%d', c.cost)
  charges[#charges + 1] = c
  at = at + 3 + 2 * n
end
local mine = waiter .. ':'
-- ms until charge c has room for its cost after `ahead` tokens of the waiters ahead,
-- which take the first places; beyond a window of them, a round later (an estimate,
-- checked again on waking).
local function place(c, ahead)
  local most = 0
  for _, win in ipairs(c.windows) do
    local limit, interval = win[1], win[2]
    local rounds, need = math.floor(ahead / limit), ahead % limit + c.cost
    if need > limit then rounds, need = rounds + 1, c.cost end
    local w = room(c.z, c.u, c.weighted, now, limit, interval, need)
    if rounds > 0 then w = math.max(w, 1) + rounds * interval end
    if w > most then most = w end
  end
  return most
end
local longest = 0
for _, c in ipairs(charges) do longest = math.max(longest, c.horizon) end
-- The epoch and quarantine, as in _ACQUIRE.
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1] .. ':' .. string.format('%d', now)
  redis.call('SET', KEYS[1], epoch)
end
if ARGV[2] ~= '' and ARGV[2] ~= epoch then
  local left = tonumber(string.match(epoch, ':(%d+)$')) + longest - now
  if left > redis.call('PTTL', KEYS[2]) then
    redis.call('SET', KEYS[2], '1', 'PX', left)
  end
end
local wait = math.max(redis.call('PTTL', KEYS[2]), 0)
local binding = 1
for i, c in ipairs(charges) do
  local paused = redis.call('PTTL', c.pause)
  if paused > wait then wait, binding = paused, i end
end
for i, c in ipairs(charges) do
  local known = tonumber(redis.call('GET', c.h) or '0')
  if known > c.horizon then c.horizon = known end
  -- Unsettled tokens past their hold: dated at it, as in _ACQUIRE.
  local late = redis.call('ZRANGEBYSCORE', c.u, '-inf', now, 'WITHSCORES')
  for j = 1, #late, 2 do
    redis.call('ZREM', c.u, late[j])
    local hold = tonumber(late[j + 1])
    if hold > now - c.horizon then
      redis.call('ZADD', c.z, late[j + 1], late[j])
      local keep = hold + c.horizon - now
      if redis.call('PTTL', c.z) < keep then redis.call('PEXPIRE', c.z, keep) end
    end
  end
  redis.call('ZREMRANGEBYSCORE', c.z, '-inf', string.format('%d', now - c.horizon))
  c.wait, c.ahead, c.held = 0, 0, 0
  -- (A cost of 0 is checked too: an estimate that its route's settle corrects.)
  do
    -- The costs of the waiters ranked ahead (a place not refreshed by its planned
    -- wake-up plus a grace is presumed dead; equal ranks ordered by member): all of
    -- them (ahead: this call's own place comes after theirs), and those holding it back
    -- now (held): of another priority, or of this one once their wake-up is due.
    if waiter ~= '' and redis.call('EXISTS', c.q) == 1 then
      for _, dead in ipairs(redis.call('ZRANGEBYSCORE', c.qexp, '-inf', now)) do
        redis.call('ZREM', c.q, dead)
        redis.call('ZREM', c.qexp, dead)
      end
      local q = redis.call('ZRANGEBYSCORE', c.q, '-inf', string.format('%d', rank), 'WITHSCORES')
      for j = 1, #q, 2 do
        local m = q[j]
        if string.sub(m, 1, #mine) ~= mine and (tonumber(q[j + 1]) < rank or m < c.me) then
          local w, holds = weight(m), true
          if string.match(m, ':(%-?%d+)#') == ARGV[8] then
            local due = redis.call('ZSCORE', c.qexp, m)
            if not due then  -- its expiry lost (evicted): gone
              redis.call('ZREM', c.q, m)
              w = 0
            end
            holds = due and tonumber(due) <= now + GRACE_MS
          end
          c.ahead = c.ahead + w
          if holds then c.held = c.held + w end
        end
      end
    end
    c.weighted = redis.call('EXISTS', c.w) == 1
    c.wait = place(c, c.held)
  end
end
-- Room now beside the waiters holding it back: taken. Else this call waits for its own
-- place, behind every waiter ahead, so waiters of one priority take in arrival order;
-- while their wake-ups are not due, room that a refund (correct) frees is used at once.
local short = wait
for _, c in ipairs(charges) do short = math.max(short, c.wait) end
for i, c in ipairs(charges) do
  if short > 0 and c.ahead > c.held then c.wait = place(c, c.ahead) end
  if c.wait > wait then wait, binding = c.wait, i end
end
if wait > 0 then
  if waiter ~= '' then
    for _, c in ipairs(charges) do
      if c.wait > 0 and (budget < 0 or wait <= budget) then
        -- In the queue of each bucket lacking room for this call; not of the others.
        redis.call('ZADD', c.q, rank, c.me)
        redis.call('ZADD', c.qexp, string.format('%d', now + wait + GRACE_MS), c.me)
        local qttl = math.max(c.horizon + cap, wait + GRACE_MS)
        if redis.call('PTTL', c.q) < qttl then redis.call('PEXPIRE', c.q, qttl) end
        if redis.call('PTTL', c.qexp) < qttl then redis.call('PEXPIRE', c.qexp, qttl) end
      else
        redis.call('ZREM', c.q, c.me)
        redis.call('ZREM', c.qexp, c.me)
      end
    end
  end
  return {0, wait, now, epoch, binding}
end
local hold = now + held
for _, c in ipairs(charges) do
  if waiter ~= '' then
    redis.call('ZREM', c.q, c.me)
    redis.call('ZREM', c.qexp, c.me)
  end
  local ttl = c.horizon + cap
  local member = ARGV[5]
  if c.cost ~= 1 then
    member = member .. '#' .. string.format('%d', c.cost)
    if redis.call('PTTL', c.w) < hold - now + ttl then
      redis.call('SET', c.w, '1', 'PX', hold - now + ttl)
    end
  end
  redis.call('ZADD', c.u, string.format('%d', hold), member)
  local keep = hold - now + ttl
  if redis.call('PTTL', c.u) < keep then redis.call('PEXPIRE', c.u, keep) end
  if redis.call('PTTL', c.z) < ttl then redis.call('PEXPIRE', c.z, ttl) end
  redis.call('SET', c.h, string.format('%d', c.horizon), 'PX', ttl)
end
return {1, 0, now, epoch, binding}
""".replace("GRACE_MS", str(TICKET_GRACE_MS)).replace("AGING_MS", str(round(AGING * 1000)))
)

# KEYS: unsettled sets. ARGV: the members, one per key. Takes back a take (a call whose
# buckets are in several hash slots of a cluster, refused by a later slot).
_UNDO = """
for i, u in ipairs(KEYS) do redis.call('ZREM', u, ARGV[i]) end
return 0
"""

# KEYS: 1 the sorted set, 2 the unsettled tokens, 3 the cost marker. ARGV: 1 the member,
# 2 the member with its new weight, 3 whether that weight is not 1. Renames the member
# where it is (unsettled or dated), keeping its score; a member gone is left gone.
_CORRECT = """
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
local where = KEYS[2]
if not score then
  score = redis.call('ZSCORE', KEYS[1], ARGV[1])
  where = KEYS[1]
end
if not score then return 0 end
redis.call('ZREM', where, ARGV[1])
redis.call('ZADD', where, score, ARGV[2])
if ARGV[3] == '1' then
  local keep = math.max(redis.call('PTTL', KEYS[1]), redis.call('PTTL', KEYS[2]))
  if keep > redis.call('PTTL', KEYS[3]) then redis.call('SET', KEYS[3], '1', 'PX', keep) end
end
return 1
"""

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
  if redis.call('PTTL', zkey) < tonumber(ARGV[1]) then
    redis.call('PEXPIRE', zkey, tonumber(ARGV[1]))
  end
end
return 0
"""

# KEYS: per token, its bucket's sorted set, unsettled tokens and cost marker. ARGV: 1 the
# new score (ms), then per token its member and its bucket's longest window (ms). Moves
# each token from the unsettled to the set, dated; or moves an entry already there (past
# its hold) that still exists (never re-adds a trimmed one). Keeps the set (and a cost
# marker) alive until the entry has left every window.
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.ceil(tonumber(t[2]) / 1000)
local moved = 0
for i = 1, #KEYS, 3 do
  local z, u, member = KEYS[i], KEYS[i + 1], ARGV[2 + (i - 1) / 3 * 2]
  local ttl = tonumber(ARGV[1]) + tonumber(ARGV[3 + (i - 1) / 3 * 2]) - now
  local keep = true
  if redis.call('ZREM', u, member) == 1 then
    if ttl <= 0 then keep = false else redis.call('ZADD', z, ARGV[1], member) end
  elseif redis.call('ZADD', z, 'XX', 'CH', ARGV[1], member) == 0 then
    keep = false
  end
  if keep then
    moved = moved + 1
    local pttl = redis.call('PTTL', z)
    if ttl > 0 and (pttl == -1 or pttl < ttl) then redis.call('PEXPIRE', z, ttl) end
    if ttl > 0 and string.find(member, '#', 1, true) and redis.call('PTTL', KEYS[i + 2]) < ttl then
      redis.call('SET', KEYS[i + 2], '1', 'PX', ttl)
    end
  end
end
return moved
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
    cost: int = 1  # changed by correct(); the member then carries it ("id#cost")


@dataclasses.dataclass
class _Part:
    """One charge of a :class:`_Members` token: its bucket and its member there."""

    key: str  # the bucket key (the charge's)
    zkey: str
    member: str  # the id, with "#cost" for a cost other than 1
    cost: int
    horizon: int  # the charge's longest window, margin included (ms)


@dataclasses.dataclass
class _Members:
    """Handle of a token of several charges (routes, costs), used by the thread holding
    it (and by ``correct``, called by that thread too)."""

    parts: list[_Part]
    score: int  # server time (ms) when taken
    taken_at: float  # time.monotonic() just before the (first) script call that took it
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
        self._take_many_script = client.register_script(_TAKE_MANY)
        self._undo_script = client.register_script(_UNDO)
        self._correct_script = client.register_script(_CORRECT)
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
            zkey + ":w",
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

    def _take_many(
        self,
        key: str,
        charges: Sequence[Charge],
        deadline: float | None,
        start: float,
        priority: int,
    ) -> Token:
        # One script per hash slot: one in all on a server, and on a cluster for a call
        # whose buckets are all of its origin (see RedisClusterLimiter.key_for). A call
        # over several slots (a session-wide "*" bucket with an origin's routes) takes
        # slot by slot, and gives back what it took when a later slot is full: a take
        # another process sees for a moment, never one more than the limits allow.
        groups: dict[str, list[tuple[Charge, str]]] = {}
        for charge in charges:
            zkey = self.key_for(charge.key)
            groups.setdefault(self._scope(zkey), []).append((charge, zkey))
        plans = [(scope, group, self._many_keys(group)) for scope, group in groups.items()]
        # One id for this call's place in its buckets' queues, kept while it waits. It
        # starts with this machine's monotonic clock: calls ranked alike (first looks in
        # the same server millisecond) go in the order they started, not at random.
        waiter = f"{time.monotonic_ns():020d}{os.urandom(4).hex()}" if self.fair else ""
        since: int | str = ""  # the server's time at the first look (the queue's rank)
        queued = False
        try:
            while True:
                ident = os.urandom(8).hex()
                sent = time.monotonic()
                parts: list[_Part] = []
                taken: list[tuple[list[str], list[str]]] = []  # (unsettled sets, members)
                score, wait, binding = 0, 0, key
                budget = (
                    -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
                )
                try:
                    for scope, group, keys in plans:
                        args: list[Any] = [
                            os.urandom(8).hex(),
                            self._epochs.get(scope, ""),
                            self._settle_cap_ms,
                            self._unsettled_ms,
                            ident,
                            waiter,
                            since,
                            priority,
                            budget,
                        ]
                        for charge, _ in group:
                            args += [charge.cost, max(ms for _, ms in charge.windows)]
                            args += [len(charge.windows), *(n for w in charge.windows for n in w)]
                        reply: Any = self._take_many_script(keys, args)
                        got, wait, now = int(reply[0]), int(reply[1]), int(reply[2])
                        epoch = reply[3]
                        self._epochs[scope] = (
                            epoch.decode() if isinstance(epoch, bytes) else str(epoch)
                        )
                        since = since or now
                        if not got:
                            binding = group[int(reply[4]) - 1][0].key
                            break
                        score = score or now
                        mine = [
                            _Part(
                                c.key,
                                zkey,
                                ident if c.cost == 1 else f"{ident}#{c.cost}",
                                c.cost,
                                max(ms for _, ms in c.windows),
                            )
                            for c, zkey in group
                        ]
                        parts += mine
                        taken.append(([p.zkey + ":u" for p in mine], [p.member for p in mine]))
                except BaseException:
                    self._undo(taken)
                    raise
                if wait <= 0:
                    queued = False  # every slot's script took it out of its queues
                    return Token(key, _Members(parts, score, sent), time.monotonic() - start)
                self._undo(taken)
                queued = bool(waiter) and (budget < 0 or wait <= budget)  # (see _TAKE_MANY)
                raise_if_late(binding, wait, deadline)
                self.sleep(wait / 1000)
        finally:
            if queued:
                # Best effort (a refusal by the deadline left the queues already; an
                # abandoned place otherwise expires by itself).
                leave = [
                    (k, f"{waiter}:{priority}#{c.cost}")
                    for _, group in groups.items()
                    for c, zkey in group
                    for k in (zkey + ":pq", zkey + ":pqexp")
                ]
                by_scope: dict[str, tuple[list[str], list[str]]] = {}
                for k, member in leave:
                    sets, members = by_scope.setdefault(self._scope(k), ([], []))
                    sets.append(k)
                    members.append(member)
                self._undo(list(by_scope.values()))

    def _many_keys(self, group: list[tuple[Charge, str]]) -> list[str]:
        """The keys of :data:`_TAKE_MANY` for charges of one scope."""
        scope = self._scope(group[0][1])
        keys = [scope + ":epoch", scope + ":quarantine"]
        for _, zkey in group:
            keys += [zkey, zkey + ":pause", zkey + ":h", zkey + ":u", zkey + ":w"]
            keys += [zkey + ":pq", zkey + ":pqexp"]
        return keys

    def _undo(self, taken: list[tuple[list[str], list[str]]]) -> None:
        """Give back the takes of a call refused by a later hash slot (best effort: a
        take not given back holds its places until its hold, UNSETTLED_MAX)."""
        for sets, members in taken:
            with contextlib.suppress(redis.RedisError, OSError, ValueError):
                self._undo_script(sets, members)

    def _correct(self, token: Token, key: str, cost: int) -> None:
        handle: _Member | _Members | None = token.handle
        if isinstance(handle, _Member):
            # A one-token take (acquire): its charge is on its own key.
            parts: list[_Member | _Part] = [handle] if key == token.key else []
        else:
            parts = [p for p in handle.parts if p.key == key] if handle is not None else []
        for part in parts[:1]:
            if part.cost == cost:
                return
            ident = part.member.partition("#")[0]
            member = ident if cost == 1 else f"{ident}#{cost}"
            z = part.zkey
            if self._correct_script(
                [z, z + ":u", z + ":w"], [part.member, member, "1" if cost != 1 else "0"]
            ):
                part.member, part.cost = member, cost

    def _sent(self, token: Token) -> None:
        handle: _Member | _Members = token.handle
        self._date(handle, self._sent_time(token, handle.score, handle.taken_at))

    def _settle(self, token: Token) -> None:
        handle: _Member | _Members = token.handle
        new = self._settled_time(token, handle.score, handle.taken_at)
        if handle.dated is not None and new <= handle.dated:
            return  # dated by its send already; earlier would only free its place sooner
        self._date(handle, new)

    def _date(self, handle: _Member | _Members, new: int) -> None:
        """Move the token(s) of ``handle`` out of the unsettled, dated ``new`` (server ms)."""
        if isinstance(handle, _Member):
            z = handle.zkey
            self._settle_script([z, z + ":u", z + ":w"], [new, handle.member, self._horizon_ms])
        else:
            # One script per hash slot (see _take_many).
            groups: dict[str, tuple[list[str], list[Any]]] = {}
            for part in handle.parts:
                keys, args = groups.setdefault(self._scope(part.zkey), ([], [new]))
                keys += [part.zkey, part.zkey + ":u", part.zkey + ":w"]
                args += [part.member, part.horizon]
            for keys, args in groups.values():
                self._settle_script(keys, args)
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

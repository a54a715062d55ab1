"""Per-key sliding-window token buckets with bounded, fail-fast waits.

pyrate-limiter's ``Limiter`` is not used on purpose: its non-blocking acquire denies
falsely under lock contention, a timed acquire sleeps the whole timeout before
failing, and it adds ``buffer_ms`` to every wait. Its buckets are sound, so this
module drives them directly and owns the waiting.
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from collections.abc import Callable, Sequence

from pyrate_limiter import Rate

from .._exceptions import RateLimitExceeded
from .base import (
    AGING,
    DEFAULT_ARRIVAL,
    Charge,
    ResponseTimes,
    Token,
    pause_seconds,
    pays,
)

# Housekeeping cadence: drop buckets whose every window has emptied, so a crawl
# over a million hosts does not keep a million buckets.
_SWEEP_EVERY = 10.0


class _Log:
    """One key's sliding-window log: dated tokens, and tokens whose request is in flight.

    A call may take several tokens at once (its cost): an entry is a date and a weight,
    kept as ``cum``, the running total of the weights (since the log began) up to and
    including each entry, so the tokens in any span are one subtraction.
    """

    __slots__ = ("base", "cum", "dates", "horizon", "pending", "waiters")

    def __init__(self) -> None:
        self.dates: list[float] = []  # settled entries' dates, sorted
        self.cum: list[int] = []  # running total of their weights (parallel to dates)
        self.base = 0  # running total before dates[0] (entries dropped off the front)
        self.pending: dict[Token, int] = {}  # taken, not yet settled -> tokens taken
        self.horizon = 0.0  # the longest window of the rates this key was last taken under
        self.waiters: dict[_Waiter, None] = {}  # calls sleeping until this key has room

    def total_before(self, index: int) -> int:
        """Weight of the entries before ``index``, counted from the log's beginning."""
        return self.cum[index - 1] if index else self.base

    def add(self, date: float, weight: int) -> None:
        """Enter ``weight`` tokens dated ``date``."""
        dates, cum = self.dates, self.cum
        if not dates or date >= dates[-1]:
            dates.append(date)
            cum.append((cum[-1] if cum else self.base) + weight)
            return
        at = bisect.bisect_right(dates, date)
        dates.insert(at, date)
        cum.insert(at, self.total_before(at) + weight)
        for later in range(at + 1, len(cum)):
            cum[later] += weight

    def change(self, date: float, old: int, new: int) -> bool:
        """Make an entry of ``old`` tokens dated ``date`` weigh ``new``; False if none is left."""
        dates, cum = self.dates, self.cum
        at = bisect.bisect_left(dates, date)
        while at < len(dates) and dates[at] == date:
            if cum[at] - self.total_before(at) == old:
                for later in range(at, len(cum)):
                    cum[later] += new - old
                return True
            at += 1
        return False

    def trim(self, before: float) -> None:
        """Drop the entries dated at or before ``before`` (no window counts them)."""
        cut = bisect.bisect_right(self.dates, before)
        if cut:
            self.base = self.cum[cut - 1]
            del self.dates[:cut]
            del self.cum[:cut]


# A call behind a waiter whose turn has come looks again this long after that waiter
# should have taken (its thread may be late to run).
_YIELD = 0.002


class _Waiter:
    """A call sleeping until its buckets have room: its place in their lines, and when it
    looks again.

    Its ``rank`` orders the lines (higher goes first): its priority, raised by one per
    :data:`AGING` seconds waited, is ``priority + (now - since) / AGING``; every waiter
    ages alike, so comparing ``priority - since / AGING`` orders them at any ``now``. Ties
    (one priority, one arrival time) go in arrival order (``seq``).
    """

    __slots__ = ("costs", "priority", "rank", "since", "until", "wake")

    def __init__(self, priority: int, since: float, seq: int = 0) -> None:
        self.priority = priority
        self.since = since
        self.rank = (priority - since / AGING, -seq)
        self.wake = since  # when it looks again
        self.costs: dict[_Log, int] = {}  # its cost in each bucket whose line it is in
        self.until: dict[_Log, float] = {}  # when each of those should have its turn


def _holds(other: _Waiter, me: _Waiter) -> bool:
    """Whether ``other`` goes before ``me`` in a bucket's line (ranks higher)."""
    return other.rank > me.rank


def _reached(
    log: _Log, first: int, before: int, flying: list[tuple[float, int]], need: int
) -> float:
    """The date by which ``need`` tokens of the window (settled entries from ``first``, and
    ``flying`` ones, sorted) have been taken: the date that must leave for room."""
    taken = 0  # flying tokens dated before the one looked at
    for date, weight in flying:
        settled = bisect.bisect_right(log.dates, date, first)
        if log.total_before(settled) - before + taken >= need:
            break  # reached among the settled entries before this flying one
        taken += weight
        if log.total_before(settled) - before + taken >= need:
            return date
    at = bisect.bisect_left(log.cum, before + need - taken, first)
    return log.dates[at]


class KeyedLimiter:
    """One sliding-window log per key, all with the same rates.

    A token taken but not yet settled counts as sent *now* (its request may reach the
    server at any later moment), or, once its connection noted the send, as sent then
    plus ``arrival``; :meth:`settle` gives it its final date. So a thread that waits
    any length of time between its token and its send (for the GIL, a TLS handshake,
    a proxy) is counted when its request leaves, and the server's latency is not.

    :param rates: binding rates, as returned by ``normalize_limits``; with none, only
        pauses are enforced.
    :param margin: seconds added to every window (clock rounding).
    :param arrival: seconds after a request leaves this process by which the server
        is assumed to have counted it (its own stamping delay).
    :param clock: monotonic clock in seconds (injectable for tests).
    :param sleep: sleep function (injectable for tests).
    """

    def __init__(
        self,
        rates: list[Rate],
        *,
        margin: float = 0.0,
        arrival: float = DEFAULT_ARRIVAL,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._set(rates, margin)
        self.arrival = arrival
        self._clock = clock
        self.sleep = sleep
        # _lock guards _logs (every log's dates and pending), _paused and _next_sweep,
        # so a check-and-take is atomic across threads. Never held while sleeping.
        self._lock = threading.Lock()
        self._logs: dict[str, _Log] = {}
        self._seq = itertools.count()  # arrival order of waiting calls (under _lock)
        self._times = ResponseTimes()
        self._paused: dict[str, float] = {}
        self._next_sweep = clock() + _SWEEP_EVERY

    def after_fork(self) -> None:
        """In a forked child: a new lock (the parent may have held it at fork time), and
        the parent's in-flight tokens dated now (their threads do not exist here)."""
        self._lock = threading.Lock()
        self._times.after_fork()
        now = self._clock()
        for log in self._logs.values():
            for weight in log.pending.values():
                log.add(now, weight)
            log.pending = {}
            log.waiters = {}  # their threads do not exist here

    def close(self) -> None:
        """Nothing to release: the logs live in this process's memory."""

    def pause(self, key: str, seconds: float) -> None:
        """Record that ``key`` must not be sent to for ``seconds`` (a server asked).

        NaN or a value <= 0 records nothing; a longer one than :data:`MAX_PAUSE` is cut
        to it.
        """
        seconds = pause_seconds(seconds)
        if not seconds:
            return
        until = self._clock() + seconds
        with self._lock:
            if until > self._paused.get(key, 0.0):
                self._paused[key] = until

    def paused_for(self, key: str, deadline: float | None = None) -> float:
        """Seconds left of a pause on ``key`` (0 when there is none); never waits."""
        # A dict read is atomic under the GIL: no lock on this per-call path.
        until = self._paused.get(key)
        return 0.0 if until is None else max(0.0, until - self._clock())

    def acquire(self, key: str, deadline: float | None) -> Token:
        """Take one token for ``key``, waiting as the rates require.

        :param key: the bucket key.
        :param deadline: monotonic time by which the token must be taken, or ``None``.
        :returns: the token, with the seconds spent waiting.
        :raises RateLimitExceeded: at once when the needed wait would pass ``deadline``.
        """
        if not self.rates:
            return Token(key, None, 0.0)
        # take() for one token of one key, without its lists: the path of most calls.
        start: float | None = None
        while True:
            with self._lock:
                windows, horizon = self._windows, self._horizon  # set_rates changes both
                now = self._clock()
                if start is None:
                    start = now
                if now >= self._next_sweep:
                    self._sweep(now)
                log = self._logs.get(key)
                if log is None:
                    log = self._logs[key] = _Log()
                wait = self._wait(log, windows, horizon, 1, now)
                if wait <= 0 and not log.waiters:
                    token = Token(key, ((key, log, 1),), now - start)
                    log.pending[token] = 1
                    return token
            # Waiting, or others wait: in line with them (priorities, aging).
            return self.take(key, (Charge(key, self._ms, 1),), deadline)

    def take(
        self, key: str, charges: Sequence[Charge], deadline: float | None, priority: int = 0
    ) -> Token:
        """Take every charge at once, all or nothing (see :meth:`Limiter.take`).

        One lock makes the check of every bucket and the take of every cost one step;
        no token is held while the call sleeps.

        A call that must wait is entered in the line of each bucket it cannot take from
        yet, and sleeps until its own turn. A bucket's line is ordered by priority (each
        waiting call's raised by one per :data:`AGING` seconds waited), then arrival: a
        call takes from a bucket only when it has room for the costs of the calls ahead
        of it in that line as well as its own, never for its own, smaller cost alone;
        so calls of one priority take in arrival order, and a call waiting for 50
        tokens is not overtaken by later calls of 1 (when room for all of them appears
        at once, they take it together). A call that waits longer for another of its
        buckets does not hold this one back meanwhile (it keeps its rank, and holds
        this line once this bucket is the one it waits for). Each waiter sleeps
        until its turn is expected (room for its cost and the costs ahead of it), so
        the waiters of a bucket wake one by one, not all at once.

        :raises RateLimitExceeded: at once when the wait, the line ahead included, would
            pass ``deadline``; no bucket is charged.
        :raises ValueError: for a cost larger than a limit of its bucket.
        """
        needs = [(c.key, self._seconds(c.windows), c.cost) for c in charges if pays(c)]
        for name, (windows, _), cost in needs:
            for limit, window in windows:
                if cost > limit:
                    raise ValueError(
                        f"a cost of {cost} can never be taken from {name}: its limit is "
                        f"{limit} per {window:g} s"
                    )
        if not needs:
            return Token(key, None, 0.0)
        me: _Waiter | None = None
        waiting: list[_Log] = []  # the logs whose lines ``me`` is in
        try:
            while True:
                with self._lock:
                    now = self._clock()
                    if me is None:
                        me = _Waiter(priority, now, next(self._seq))
                    if now >= self._next_sweep:
                        self._sweep(now)
                    wait, binding = 0.0, needs[0][0]
                    logs: list[_Log] = []
                    blocked: list[tuple[_Log, int, float]] = []  # (log, cost, turn)
                    for name, (windows, horizon), cost in needs:
                        log = self._logs.get(name)
                        if log is None:
                            log = self._logs[name] = _Log()
                        logs.append(log)
                        if log.waiters:
                            need = self._turn(log, windows, horizon, cost, me, now)
                        else:
                            need = self._wait(log, windows, horizon, cost, now)
                        if need > 0:
                            blocked.append((log, cost, now + need))
                        if need > wait:
                            wait, binding = need, name
                    if wait <= 0:
                        handle = tuple(
                            (name, log, cost)
                            for (name, _, cost), log in zip(needs, logs, strict=True)
                        )
                        token = Token(key, handle, now - me.since)
                        for _, log, cost in handle:
                            log.pending[token] = cost
                        return token
                    if deadline is not None and now + wait > deadline:
                        raise RateLimitExceeded(
                            f"no rate-limit token for {binding} within max_wait "
                            f"(next in {wait:.3f} s)",
                            key=binding,
                            retry_after=wait,
                        )
                    # In the lines of the buckets it cannot take from only: one with room
                    # for it is not held back while it waits for another.
                    me.wake = now + wait
                    lines = {log for log, _, _ in blocked}
                    for log in [w for w in waiting if w not in lines]:
                        del log.waiters[me]
                        del me.costs[log], me.until[log]
                        waiting.remove(log)
                    for log, cost, turn in blocked:
                        if me not in log.waiters:
                            log.waiters[me] = None
                            waiting.append(log)
                        me.costs[log], me.until[log] = cost, turn
                self.sleep(wait)
        finally:
            if waiting:
                with self._lock:
                    for log in waiting:
                        log.waiters.pop(me, None)  # type: ignore[arg-type]

    def _turn(
        self,
        log: _Log,
        windows: tuple[tuple[int, float], ...],
        horizon: float,
        cost: int,
        me: _Waiter,
        now: float,
    ) -> float:
        """Seconds until ``me`` may take ``cost`` from ``log``, behind the calls ahead of
        it in the log's line (0: now). Under ``_lock``.

        A call ahead holds the line unless it waits longer for another of its buckets
        (its turn here comes before its wake). Behind calls that
        hold it, ``me`` waits for room for their costs and its own; when one window
        cannot hold them all, until they have taken (just after the last should have).
        """
        ahead_cost = 0
        last: float | None = None  # the latest wake of the calls holding the line
        for other in log.waiters:
            if other is me or not _holds(other, me):
                continue
            other_cost = other.costs.get(log, 0)
            if other.until.get(log, other.wake) < other.wake - _YIELD:
                # Waiting for another bucket: this one is not held for it meanwhile (it
                # keeps its rank, and holds this line again once this bucket binds it).
                continue
            ahead_cost += other_cost
            last = other.wake if last is None else max(last, other.wake)
        if last is None:
            return self._wait(log, windows, horizon, cost, now)
        total = ahead_cost + cost
        limit, window = min(windows)  # the smallest limit: the line moves at its pace
        if total <= limit:
            # Room for the calls ahead and this one: taking leaves them theirs. (Waiting
            # for them to take first would serialize a line, one thread wake per token,
            # when a burst of room appears.)
            return self._wait(log, windows, horizon, total, now)
        # Not room for all of them at once: they take first, a window per limit's worth.
        rounds = (total - 1) // limit
        room = self._wait(log, windows, horizon, total - rounds * limit, now) + rounds * window
        return max(room, last - now + _YIELD, _YIELD)

    def _seconds(
        self, windows: tuple[tuple[int, int], ...]
    ) -> tuple[tuple[tuple[int, float], ...], float]:
        """``(limit, seconds)`` windows, each longer by the margin, and the longest of
        them (cached per route)."""
        found = self._converted.get(windows)
        if found is None:
            margin = self._margin_ms
            seconds = tuple((limit, (ms + margin) / 1000) for limit, ms in windows)
            found = (seconds, max(window for _, window in seconds))
            if len(self._converted) < 4096:
                self._converted[windows] = found
        return found

    def _wait(
        self,
        log: _Log,
        windows: tuple[tuple[int, float], ...],
        horizon: float,
        cost: int,
        now: float,
    ) -> float:
        """Seconds until every window of ``log`` (the longest ``horizon``) has room for
        ``cost`` at ``now`` (0: room now)."""
        log.horizon = horizon
        if log.dates and log.dates[0] <= now - horizon:
            log.trim(now - horizon)
        dates = log.dates
        flying: list[tuple[float, int]] = []
        if log.pending:
            arrival = self.arrival
            flying = sorted(
                (now if t.sent is None else t.sent + arrival, weight)
                for t, weight in log.pending.items()
            )
        wait = 0.0
        for limit, window in windows:
            low = now - window
            first = bisect.bisect_right(dates, low)
            before = log.total_before(first)
            used = (log.cum[-1] - before) if dates else 0
            fly = [f for f in flying if f[0] > low] if flying else flying
            used += sum(weight for _, weight in fly)
            over = used + cost - limit
            if over > 0:
                # The oldest tokens in the window, ``over`` of them, must leave it first.
                wait = max(wait, _reached(log, first, before, fly, over) + window - now, 1e-6)
        return wait

    def settle(self, token: Token) -> None:
        """Date a token by when its request reached the server, once the send is over.

        The server counts a request when it arrives: after the token was taken by
        however long the thread then waited (for the GIL, a connection; measured on
        loopback with 16 threads, up to 47 ms), and before the response. The date is
        the send noted by the connection plus ``arrival`` (the server's stamping), later
        by any time the answer took beyond the key's usual, and never later than the
        answer (see :class:`ResponseTimes`); without a noted send, the answer. Either
        way at or after the server's count, so our windows stay at or behind the
        server's.
        """
        handle: tuple[tuple[str, _Log, int], ...] | None = token.handle
        if handle is None:
            return
        date = self._times.date(token, self.arrival, self._clock())
        with self._lock:
            token.dated = date
            for _, log, _ in handle:
                weight = log.pending.pop(token, None)
                if weight is not None:
                    log.add(date, weight)

    def correct(self, token: Token, key: str, cost: int) -> None:
        """Make ``token``'s charge on ``key`` cost ``cost`` (see :meth:`Limiter.correct`)."""
        handle: tuple[tuple[str, _Log, int], ...] | None = token.handle
        if handle is None:
            return
        with self._lock:
            for index, (name, log, old) in enumerate(handle):
                if name != key or old == cost:
                    continue
                if token in log.pending:
                    log.pending[token] = cost
                elif token.dated is None or not log.change(token.dated, old, cost):
                    return  # gone from every window already
                token.handle = (*handle[:index], (name, log, cost), *handle[index + 1 :])
                return

    def record(
        self, key: str, cost: int = 1, windows: tuple[tuple[int, int], ...] | None = None
    ) -> None:
        """Count ``cost`` tokens for ``key`` taken now elsewhere (a shared backend), even
        past the limit: if the backend fails, this process's recent sends still count
        here. ``windows``: the route's ``(limit, ms)`` (``None``: the session's rates)."""
        if windows is None:
            if not self.rates:
                return
            horizon = self._horizon
        else:
            horizon = self._seconds(windows)[1]
        with self._lock:
            now = self._clock()
            if now >= self._next_sweep:  # keeps the recorded logs bounded
                self._sweep(now)
            log = self._logs.get(key)
            if log is None:
                log = self._logs[key] = _Log()
            log.horizon = max(log.horizon, horizon)
            log.trim(now - log.horizon)  # no window counts them
            log.add(now, cost)

    def _sweep(self, now: float) -> None:
        for key, log in list(self._logs.items()):
            if (
                not log.pending
                and not log.waiters
                and (not log.dates or log.dates[-1] <= now - log.horizon)
            ):
                del self._logs[key]
        for key, until in list(self._paused.items()):
            if until <= now:
                del self._paused[key]
        self._next_sweep = now + _SWEEP_EVERY

    def set_rates(self, rates: list[Rate], *, margin: float = 0.0) -> None:
        """Enforce ``rates`` from now on, keeping the tokens already in every window.

        The logs hold dates, not rates, so calls in flight still settle their tokens,
        and threads waiting for a token meet the new rates on their next look. (Dates
        older than the longest old window are gone: a longer new window starts with
        what the old one kept.)
        """
        with self._lock:
            self._set(rates, margin)

    def _set(self, rates: list[Rate], margin: float) -> None:
        """Set the session-wide rates (under ``_lock``, or in ``__init__``)."""
        margin_ms = int(margin * 1000)
        self._margin_ms = margin_ms
        # Windows as (limit, ms) -> as (limit, seconds) with the margin; read without
        # the lock (a dict lookup or store is atomic), cleared when the margin changes.
        self._converted: dict[
            tuple[tuple[int, int], ...], tuple[tuple[tuple[int, float], ...], float]
        ] = {}
        self._ms = tuple((r.limit, r.interval) for r in rates)
        self.rates = [Rate(r.limit, r.interval + margin_ms) for r in rates]
        self._windows = tuple((r.limit, r.interval / 1000) for r in self.rates)
        self._horizon = max((window for _, window in self._windows), default=0.0)

    def bucket_count(self) -> int:
        """Number of keys with a live log (for tests and stats)."""
        with self._lock:
            return len(self._logs)

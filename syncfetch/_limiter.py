"""Per-key sliding-window token buckets with bounded, fail-fast waits.

pyrate-limiter's ``Limiter`` is not used on purpose: its non-blocking acquire denies
falsely under lock contention, a timed acquire sleeps the whole timeout before
failing, and it adds ``buffer_ms`` to every wait. Its buckets are sound, so this
module drives them directly and owns the waiting.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from pyrate_limiter import Rate

from ._exceptions import RateLimitExceeded

# Housekeeping cadence: drop buckets whose every window has emptied, so a crawl
# over a million hosts does not keep a million buckets.
_SWEEP_EVERY = 10.0
# Assumed time between a request leaving this process and the server counting it.
DEFAULT_ARRIVAL = 0.010
# Keys whose usual response time is kept (ResponseTimes); beyond, it starts afresh.
_MAX_KEYS_TIMED = 4096

#: Longest wait a header parser returns and a limiter stores, in seconds (about 31.7
#: years): longer than any real wait, yet storable as int64 milliseconds (SQLite,
#: Redis) and below ``threading.TIMEOUT_MAX``. The pipeline caps pauses far lower,
#: at ``RetryPolicy.retry_after_max``.
MAX_PAUSE = 1e9


def pause_seconds(seconds: float) -> float:
    """``seconds`` made safe to store: 0 (no pause) for NaN or <= 0, at most MAX_PAUSE."""
    if not seconds > 0:  # NaN compares false
        return 0.0
    return float(min(seconds, MAX_PAUSE))


@dataclasses.dataclass(eq=False)
class Token:
    """A token taken for one attempt; ``settle`` dates it once the request has left.

    :ivar key: the bucket key.
    :ivar handle: what the limiter needs to find the token again (backend-specific).
    :ivar waited: seconds the caller waited for it.
    :ivar sent: ``time.monotonic()`` when the request's bytes were handed to the
        socket, noted by syncfetch's connections (``None`` until then, and for
        adapters that do not note it).
    :ivar answered: ``time.monotonic()`` when the response's headers were read, noted
        the same way.
    :ivar on_sent: called by those connections right after noting ``sent`` (a shared
        limiter dates the token by its send there, for the other processes).
    """

    key: str
    handle: Any
    waited: float
    sent: float | None = None
    answered: float | None = None
    on_sent: Callable[[Token], None] | None = None


class Limiter(Protocol):
    """What the pipeline needs from a limiter; one per session, shared by its threads.

    Implementations: :class:`KeyedLimiter` (one process), the SQLite and Redis
    limiters (shared by processes). Every method is thread-safe.
    """

    #: How the limiter sleeps while waiting for a token; the session replaces it with
    #: a sleep that ends (raising) when the session is closed.
    sleep: Callable[[float], None]

    def acquire(self, key: str, deadline: float | None) -> Token:
        """Take a token for ``key``, or raise ``RateLimitExceeded`` at once if the wait
        would pass ``deadline`` (a ``time.monotonic()`` value; ``None`` = no bound)."""
        ...

    def settle(self, token: Token) -> None:
        """Date ``token`` by when its request reached the server: ``token.sent`` plus
        the arrival margin, and never later than now (the response is in hand)."""
        ...

    def pause(self, key: str, seconds: float) -> None:
        """Record that ``key`` must not be sent to for ``seconds`` (the server asked).

        ``acquire`` does not wait for pauses: callers check :meth:`paused_for` before
        taking a concurrency slot, so no slot is held through a pause. The pipeline
        caps ``seconds`` at ``retry_after_max``; implementations still record nothing
        for NaN or a value <= 0 and cut a longer one than :data:`MAX_PAUSE` to it
        (:func:`pause_seconds`), so a backend never meets a value it cannot store.
        """
        ...

    def paused_for(self, key: str, deadline: float | None = None) -> float:
        """Seconds left of a pause on ``key`` (0 when there is none); a shared backend
        is not waited on past ``deadline`` (``time.monotonic()``; ``None``: its own timeouts)."""
        ...

    def after_fork(self) -> None:
        """Make the limiter usable in a forked child (new locks, connections, threads)."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...


class ResponseTimes:
    """Dates tokens by their send, knowing each key's usual send-to-answer time.

    The server counts a request somewhere between its send and its answer. A server
    that always takes 50 ms to answer counts early in that span: the token is dated at
    the send plus ``arrival``, and those 50 ms are not charged to the limit. When an
    answer takes longer than the key's usual time (the least of its last 16), the
    excess may have been spent before the server counted (a server thread waiting for
    a core, say): the date moves later by that excess, never past the answer. A key's
    first answer dates its token. Thread-safe.
    """

    def __init__(self) -> None:
        # _lock guards _recent (each key's last send-to-answer times).
        self._lock = threading.Lock()
        self._recent: dict[str, collections.deque[float]] = {}

    def after_fork(self) -> None:
        self._lock = threading.Lock()

    def date(self, token: Token, arrival: float, now: float) -> float:
        """The date of ``token`` (monotonic seconds), its attempt being over at ``now``.

        :param arrival: the margin for the server's stamping after the send.
        """
        answered = now if token.answered is None else min(token.answered, now)
        sent = token.sent
        if sent is None:
            return answered  # the send was not noted: the answer is all we know
        took = answered - sent
        with self._lock:
            recent = self._recent.get(token.key)
            if recent is None:
                if len(self._recent) >= _MAX_KEYS_TIMED:
                    self._recent.clear()  # a crawl over many hosts: start afresh
                recent = self._recent[token.key] = collections.deque(maxlen=16)
                usual = 0.0
            else:
                usual = min(recent)
            if token.answered is not None:
                recent.append(took)
        return min(answered, sent + arrival + max(0.0, took - usual))


class _Log:
    """One key's sliding-window log: dated tokens, and tokens whose request is in flight."""

    __slots__ = ("dates", "pending")

    def __init__(self) -> None:
        self.dates: list[float] = []  # settled tokens' dates, sorted
        self.pending: dict[Token, None] = {}  # taken, not yet settled


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
        margin_ms = int(margin * 1000)
        self.rates = [Rate(r.limit, r.interval + margin_ms) for r in rates]
        self._windows = [(r.limit, r.interval / 1000) for r in self.rates]
        self._horizon = max((w for _, w in self._windows), default=0.0)
        self.arrival = arrival
        self._clock = clock
        self.sleep = sleep
        # _lock guards _logs (every log's dates and pending), _paused and _next_sweep,
        # so a check-and-take is atomic across threads. Never held while sleeping.
        self._lock = threading.Lock()
        self._logs: dict[str, _Log] = {}
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
            for _ in log.pending:
                bisect.insort(log.dates, now)
            log.pending = {}

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
        start: float | None = None
        while True:
            with self._lock:
                now = self._clock()
                if start is None:
                    start = now
                if now >= self._next_sweep:
                    self._sweep(now)
                log = self._logs.get(key)
                if log is None:
                    log = self._logs[key] = _Log()
                wait = self._wait(log, now)
                if wait <= 0:
                    token = Token(key, log, now - start)
                    log.pending[token] = None
                    return token
            if deadline is not None and now + wait > deadline:
                raise RateLimitExceeded(
                    f"no rate-limit token for {key} within max_wait (next in {wait:.3f} s)",
                    key=key,
                    retry_after=wait,
                )
            self.sleep(wait)

    def _wait(self, log: _Log, now: float) -> float:
        """Seconds until every window of ``log`` has room at ``now`` (0: room now)."""
        dates = log.dates
        cut = bisect.bisect_right(dates, now - self._horizon)
        if cut:
            del dates[:cut]
        in_flight: list[float] = []
        if log.pending:
            arrival = self.arrival
            in_flight = sorted(now if t.sent is None else t.sent + arrival for t in log.pending)
        wait = 0.0
        for limit, window in self._windows:
            low = now - window
            first = bisect.bisect_right(dates, low)
            flying = [d for d in in_flight if d > low] if in_flight else in_flight
            over = len(dates) - first + len(flying) - limit
            if over >= 0:
                # The over-th oldest date in the window must leave it first.
                oldest = sorted(dates[first : first + over + 1] + flying)[over]
                wait = max(wait, oldest + window - now, 1e-6)
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
        log: _Log | None = token.handle
        if log is None:
            return
        date = self._times.date(token, self.arrival, self._clock())
        with self._lock:
            if log.pending.pop(token, 0) is None:
                dates = log.dates
                if not dates or date >= dates[-1]:
                    dates.append(date)
                else:
                    bisect.insort(dates, date)

    def record(self, key: str) -> None:
        """Count a token for ``key`` taken now elsewhere (a shared backend), even past the
        limit: if the backend fails, this process's recent sends still count here."""
        if not self.rates:
            return
        with self._lock:
            now = self._clock()
            if now >= self._next_sweep:  # keeps the recorded logs bounded
                self._sweep(now)
            log = self._logs.get(key)
            if log is None:
                log = self._logs[key] = _Log()
            dates = log.dates
            cut = bisect.bisect_right(dates, now - self._horizon)  # no window counts them
            if cut:
                del dates[:cut]
            bisect.insort(dates, now)

    def _sweep(self, now: float) -> None:
        for key, log in list(self._logs.items()):
            if not log.pending and (not log.dates or log.dates[-1] <= now - self._horizon):
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
        margin_ms = int(margin * 1000)
        new = [Rate(r.limit, r.interval + margin_ms) for r in rates]
        with self._lock:
            self.rates = new
            self._windows = [(r.limit, r.interval / 1000) for r in new]
            self._horizon = max((w for _, w in self._windows), default=0.0)

    def bucket_count(self) -> int:
        """Number of keys with a live log (for tests and stats)."""
        with self._lock:
            return len(self._logs)

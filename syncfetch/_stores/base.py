"""What every limit store shares: the ``Limiter`` protocol, tokens and charges, the
dating of tokens by their send (``ResponseTimes``), and the bounds on waits."""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

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


class Charge(NamedTuple):
    """What one attempt pays one bucket: ``cost`` tokens of ``key``, under ``windows``.

    :ivar key: the bucket key (an origin, or a route with its ``{name}`` values).
    :ivar windows: ``(limit, interval in ms)`` of each of the route's rates.
    :ivar cost: tokens taken (0: free, pauses still apply).
    """

    key: str
    windows: tuple[tuple[int, int], ...]
    cost: int
    #: The :class:`syncfetch.Route` charging it (its ``settle`` and ``free``), if any.
    route: Any = None


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
    :ivar dated: the date ``settle`` gave it (in-memory limiter; ``None`` until then).
    :ivar on_sent: called by those connections right after noting ``sent`` (a shared
        limiter dates the token by its send there, for the other processes).
    """

    key: str
    handle: Any
    waited: float
    sent: float | None = None
    answered: float | None = None
    dated: float | None = None
    on_sent: Callable[[Token], None] | None = None
    #: What a shared limiter's ``take`` charged: key -> (cost, windows), kept up to date
    #: by ``correct`` (the per-process fallback counts the difference too).
    charged: dict[str, tuple[int, tuple[tuple[int, int], ...]]] | None = None


def pays(charge: Charge) -> bool:
    """Whether ``charge`` is entered in its bucket: it has windows, and a cost, or a route
    that may correct it after the answer (``settle``: a cost of 0 up front, the truth
    later; without an entry the correction would have nothing to change)."""
    if not charge.windows:
        return False
    return charge.cost > 0 or getattr(charge.route, "settle", None) is not None


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

    def take(
        self, key: str, charges: Sequence[Charge], deadline: float | None, priority: int = 0
    ) -> Token:
        """Take every charge (``cost`` tokens of its ``key`` under its own ``windows``)
        at once: all or nothing.

        The check of every bucket and the take of every cost are one atomic step (one
        lock in memory; one transaction in SQLite; one Lua script in Redis, whose keys
        for one call share a hash slot in Redis Cluster through a ``{origin}`` hash tag).
        Nothing is held while waiting: when any bucket lacks room, the call sleeps until
        the latest of the buckets' waits and looks again at all of them. A call that
        cannot have them all by ``deadline`` raises ``RateLimitExceeded`` at once and
        takes none. ``key`` names the token (the call's origin: response times are kept
        per origin); no charges (or only free ones) take nothing.

        ``priority``: while a call of a higher priority, or an earlier one of the same,
        waits for one of the buckets, a later or lower one does not take from it (see
        :class:`KeyedLimiter`; the shared limiters rank their waiting ``take`` calls by it).

        :raises ValueError: at once for a cost larger than a limit of its bucket (no
            window can ever hold it), naming the bucket.
        """
        ...

    def settle(self, token: Token) -> None:
        """Date ``token`` by when its request reached the server: ``token.sent`` plus
        the arrival margin, and never later than now (the response is in hand)."""
        ...

    def correct(self, token: Token, key: str, cost: int) -> None:
        """Make ``token``'s charge on ``key`` cost ``cost`` instead (a refund or a further
        charge, known from the response), before or after :meth:`settle`; even past the
        limit, so the next calls wait for the true balance. Unknown keys are ignored."""
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


#: Seconds of waiting that raise a waiting call's priority by one, so a batch waiting
#: behind interactive calls is not starved: after 10 s it outranks new calls of one
#: priority higher, after 20 s of two higher, and so on.
AGING = 10.0

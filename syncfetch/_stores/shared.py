"""What the SQLite and Redis limiters share: the ``on_backend_error`` policy, the
per-process fallback limiter, and the fork hooks that keep their connections safe."""

from __future__ import annotations

import collections
import contextvars
import dataclasses
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TypeVar

from pyrate_limiter import Rate
from requests.exceptions import RequestException

from .._exceptions import BackendUnavailable, RateLimitExceeded
from .base import DEFAULT_ARRIVAL, Charge, ResponseTimes, Token, pause_seconds, pays
from .memory import KeyedLimiter

log = logging.getLogger("syncfetch")
T = TypeVar("T")

# While a shared backend is down, "fallback" limiters probe it at most this often.
RETRY_BACKEND_EVERY = 1.0

#: Seconds a token taken but not yet dated (by its send, ``SharedLimiter.sent``, or its
#: answer, ``settle``) counts as "now" for every process: its request may reach the
#: server at any later moment (issue 13). After that it counts as sent at its take plus
#: this bound, until dated. The bound exists for a process that dies holding a token
#: (killed, crashed): its token stops blocking its place after this plus one window. 10 s
#: is over three times the default connect timeout (3.05 s), so it outlasts the
#: connection set-up (DNS, connect, TLS, a proxy) between a take and its send; a send
#: later still than that is the one case left uncovered. A token whose send is not seen
#: (a user-mounted adapter) holds its place until its answer, up to this bound.
UNSETTLED_MAX = 10.0

#: While a caller waits on the backend (acquire, paused_for): the ``time.monotonic()``
#: by which it must be answered (``math.inf``: no bound). ``None`` outside such a wait
#: (settle, pause, clean-up), where the backend's own timeouts apply. The backends read
#: it to bound their lock waits, busy retries and socket timeouts.
BACKEND_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "syncfetch_backend_deadline", default=None
)


class OutOfTime(Exception):
    """A backend wait (a lock, a busy file) outlasted the caller's deadline: the caller
    gets ``RateLimitExceeded``; the backend is not counted as failed."""


# Every shared limiter of this process, for the fork hooks at the end of this module
# (limiters used without a Session are reset too).
_LIVE: weakref.WeakSet[SharedLimiter] = weakref.WeakSet()


@dataclasses.dataclass(frozen=True)
class _FallbackHandle:
    """Handle of a token taken from the per-process fallback limiter during an outage."""

    token: Token


class SharedLimiter:
    """What the SQLite and Redis limiters share: rates, settle cap, and backend failures.

    Subclasses implement :meth:`_take`, :meth:`_settle`, :meth:`_pause`,
    :meth:`_reset_after_fork` and :meth:`_close`, letting the exceptions listed in
    ``errors`` escape when the backend fails; this class turns them into
    :class:`BackendUnavailable` (``on_backend_error="raise"``) or into a fall back to
    a per-process :class:`KeyedLimiter` with the same rates (``"fallback"``).

    :param rates: binding rates, as returned by ``normalize_limits``.
    :param margin: seconds added to every window, as in :class:`KeyedLimiter`.
    :param arrival: seconds after a send by which the server counts it, as in
        :class:`KeyedLimiter`.
    :param on_backend_error: ``"raise"`` or ``"fallback"``.
    :param name: the backend as named in messages (no credentials).
    :param errors: exception types that mean "the backend failed".
    :param unsettled_max: seconds an unsettled token counts as now (see
        :data:`UNSETTLED_MAX`).
    """

    def __init__(
        self,
        rates: list[Rate],
        *,
        margin: float,
        on_backend_error: str,
        name: str,
        errors: tuple[type[BaseException], ...],
        arrival: float = DEFAULT_ARRIVAL,
        unsettled_max: float = UNSETTLED_MAX,
    ) -> None:
        if on_backend_error not in ("raise", "fallback"):
            raise ValueError(
                f"on_backend_error must be 'raise' or 'fallback', not {on_backend_error!r}"
            )
        margin_ms = self._margin_ms = int(margin * 1000)
        # The rates as a route's windows, (limit, ms) without the margin (take's fast path).
        self._own_windows = tuple((r.limit, r.interval) for r in rates)
        self.rates = [Rate(r.limit, r.interval + margin_ms) for r in rates]
        self.name = name
        self.arrival = arrival
        self._times = ResponseTimes()
        # An unsettled token counts as now until its take plus this (ms).
        self._unsettled_ms = max(1, math.ceil(unsettled_max * 1000))
        # Kept on the backend's keys beyond the longest window (ms); settle extends
        # the keys' lifetime itself when it dates a token later than that.
        self._settle_cap_ms = math.ceil(arrival * 1000)
        # No rate counts an entry older than the longest window.
        self._horizon_ms = max((r.interval for r in self.rates), default=0)
        self._errors = errors
        # The fallback also counts every token the backend grants (KeyedLimiter.record),
        # so a switch to it mid-window does not start from an empty window. Its windows
        # are longer by the settle cap: a backend token is recorded when taken, but the
        # backend may re-date it up to the cap later.
        self._fallback = (
            KeyedLimiter(rates, margin=margin + self._settle_cap_ms / 1000, arrival=arrival)
            if on_backend_error == "fallback"
            else None
        )
        # _state_lock guards _down, _recovering, _probe_at and _outage (the outage
        # bookkeeping).
        self._state_lock = threading.Lock()
        self._down = False
        # Set while a thread writes _outage to the backend that seems back: meanwhile
        # no fallback token is used (their callers go to the backend).
        self._recovering = False
        self._probe_at = 0.0
        # Tokens taken from the fallback, (key, time.monotonic(), longest window in ms),
        # one per unit of cost, within their window: written to the backend when it is
        # back, before any token is taken from it, so the switch back does not spend
        # the window twice.
        self._outage: collections.deque[tuple[str, float, int]] = collections.deque()
        # Held while _outage is written to the backend: a thread taking a token from the
        # backend waits until the tokens taken before it are there.
        self._recover_lock = threading.Lock()
        self.sleep: Callable[[float], None] = time.sleep
        #: Told ``(up, reason)`` when the backend goes down or comes back; set by the
        #: pipeline while an ``on_event`` hook is set, else None.
        self.on_backend: Callable[[bool, str], None] | None = None
        _LIVE.add(self)

    # -- the Limiter protocol ------------------------------------------------------------

    def acquire(self, key: str, deadline: float | None) -> Token:
        """Take one token for ``key`` from the shared backend, waiting as the rates require.

        :param key: the bucket key.
        :param deadline: monotonic time by which the token must be taken, or ``None``.
        :returns: the token, with the seconds spent waiting.
        :raises RateLimitExceeded: at once when the needed wait would pass ``deadline``.
        :raises BackendUnavailable: when the backend fails and ``on_backend_error="raise"``.
        """
        if not self.rates:
            # Nothing to count: pauses are waited out before the slot (paused_for), as
            # with KeyedLimiter, so no backend call at all.
            return Token(key, None, 0.0)
        return self._rounds(
            key,
            deadline,
            lambda start: self._take(key, deadline, start),
            lambda: self._fallback.acquire(key, deadline),  # type: ignore[union-attr]
            [(key, self._horizon_ms, 1)],
            lambda: self._fallback.record(key),  # type: ignore[union-attr]
        )

    def take(
        self, key: str, charges: Sequence[Charge], deadline: float | None, priority: int = 0
    ) -> Token:
        """Take every charge at once, all or nothing, in every process (see
        :meth:`Limiter.take`): one transaction in SQLite, one Lua script in Redis.

        One token of ``key`` under this limiter's own rates is :meth:`acquire`.
        ``priority`` orders the waiters of a bucket where the backend supports it.

        :raises ValueError: at once for a cost larger than a limit of its bucket.
        :raises RateLimitExceeded: at once when the wait would pass ``deadline``.
        :raises BackendUnavailable: when the backend fails and ``on_backend_error="raise"``.
        """
        paying = [c for c in charges if pays(c)]
        if not paying:
            return Token(key, None, 0.0)
        for charge in paying:
            for limit, ms in charge.windows:
                if charge.cost > limit:
                    raise ValueError(
                        f"a cost of {charge.cost} can never be taken from {charge.key}: its "
                        f"limit is {limit} per {ms / 1000:g} s"
                    )
        token = self._take_charges(key, paying, deadline, priority)
        token.charged = {c.key: (c.cost, c.windows) for c in paying}
        return token

    def _take_charges(
        self, key: str, paying: list[Charge], deadline: float | None, priority: int
    ) -> Token:
        """:meth:`take` once its charges are checked."""
        if (
            len(paying) == 1
            and paying[0].cost == 1
            and paying[0].key == key
            and paying[0].windows == self._own_windows
        ):
            return self.acquire(key, deadline)
        many = [c._replace(windows=self._with_margin(c.windows)) for c in paying]
        fallback = self._fallback

        def record() -> None:
            assert fallback is not None
            for charge in paying:
                fallback.record(charge.key, charge.cost, charge.windows)

        return self._rounds(
            key,
            deadline,
            lambda start: self._take_many(key, many, deadline, start, priority),
            lambda: fallback.take(key, paying, deadline, priority),  # type: ignore[union-attr]
            [(c.key, max(ms for _, ms in c.windows) + self._margin_ms, c.cost) for c in paying],
            record,
        )

    def _with_margin(self, windows: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
        """``(limit, ms)`` windows, each longer by this limiter's margin."""
        return tuple((limit, ms + self._margin_ms) for limit, ms in windows)

    def correct(self, token: Token, key: str, cost: int) -> None:
        """Make ``token``'s charge on ``key`` cost ``cost`` instead, for every process (see
        :meth:`Limiter.correct`). A backend failure is only logged.

        With ``on_backend_error="fallback"`` a further charge also counts where the
        backend's tokens are mirrored: in this process's fallback (a backend token), or
        among the outage's tokens that are written to the backend when it is back (a
        fallback token). A refund is not passed on there (they count more, never less).
        """
        handle = token.handle
        if handle is None:
            return
        if isinstance(handle, _FallbackHandle):
            assert self._fallback is not None
            self._fallback.correct(handle.token, key, cost)
        else:
            try:
                self._correct(token, key, cost)
            except self._errors as exc:
                log.debug("syncfetch: could not correct a charge on %s: %s", self.name, exc)
        charged = token.charged
        old = None if charged is None else charged.get(key)
        if charged is None or old is None:
            return
        charged[key] = (cost, old[1])
        extra = cost - old[0]
        if extra <= 0 or self._fallback is None:
            return
        if isinstance(handle, _FallbackHandle):
            horizon = max(ms for _, ms in old[1]) + self._margin_ms
            now = time.monotonic()
            with self._state_lock:
                self._outage.extend([(key, now, horizon)] * extra)
                self._trim_outage(now)
        else:
            self._fallback.record(key, extra, old[1])

    def sent(self, token: Token) -> None:
        """Date ``token`` at its send (``token.sent``) plus ``arrival``, for every process,
        as soon as the request has left (syncfetch's connections call this through
        ``token.on_sent``). Until then it counts as now; :meth:`settle` may still date
        it later (an answer slower than usual). A backend failure is only logged: the
        token then counts as now until settled.
        """
        handle = token.handle
        if handle is None or token.sent is None:
            return
        if isinstance(handle, _FallbackHandle):
            handle.token.sent = token.sent  # the fallback counts it as sent then too
            return
        try:
            self._sent(token)
        except self._errors as exc:
            log.debug("syncfetch: could not date a token by its send on %s: %s", self.name, exc)

    def settle(self, token: Token) -> None:
        """Date ``token`` by when its request reached the server (see ``KeyedLimiter.settle``).

        Until then other processes count the token as taken now (up to
        :data:`UNSETTLED_MAX` after its take). A backend failure here is only logged:
        the token then counts as now until that bound, then as sent at it; the response
        is already in hand.
        """
        handle = token.handle
        if handle is None:
            return
        if isinstance(handle, _FallbackHandle):
            assert self._fallback is not None
            handle.token.sent, handle.token.answered = token.sent, token.answered
            self._fallback.settle(handle.token)
            return
        try:
            self._settle(token)
        except self._errors as exc:
            log.debug("syncfetch: could not settle a token on %s: %s", self.name, exc)

    def pause(self, key: str, seconds: float) -> None:
        """Hold back every token for ``key`` for ``seconds``, in every process.

        A backend failure is not raised (the server's answer is already in hand); the
        pause then holds in this process's fallback limiter, if any. NaN or a value <= 0
        records nothing; a longer one than ``MAX_PAUSE`` is cut to it, so the backend is
        only ever handed a value it can store.
        """
        seconds = pause_seconds(seconds)
        if not seconds:
            return
        if self._fallback is not None:
            self._fallback.pause(key, seconds)
        try:
            self._pause(key, seconds)
        except self._errors as exc:
            self._mark_down(exc)

    def paused_for(self, key: str, deadline: float | None = None) -> float:
        """Seconds left of a pause on ``key`` set by any process (0 when there is none).

        With ``on_backend_error="fallback"``, a backend failure is not raised here: the
        fallback limiter's pause, if any, answers.

        :param deadline: ``time.monotonic()`` by which the backend must answer.
        :raises RateLimitExceeded: when the backend stays busy past ``deadline``.
        :raises BackendUnavailable: when the backend fails and ``on_backend_error="raise"``.
        """
        local = self._fallback.paused_for(key) if self._fallback is not None else 0.0
        if self._fallback is not None and self._down and time.monotonic() < self._probe_at:
            return local
        bound = BACKEND_DEADLINE.set(math.inf if deadline is None else deadline)
        try:
            return max(local, self._paused_for(key))
        except RequestException:
            raise
        except OutOfTime as exc:
            raise RateLimitExceeded(
                f"rate-limit backend {self.name} stayed busy past max_wait", key=key
            ) from exc
        except self._errors as exc:
            self.sleep(0)  # closed meanwhile: SessionClosed
            self._mark_down(exc)
            if self._fallback is None:
                # Not left to the acquire that follows: it would wait out a hung
                # backend's timeout a second time.
                raise BackendUnavailable(
                    f"rate-limit backend {self.name} is unavailable: {exc}"
                ) from exc
            return local
        finally:
            BACKEND_DEADLINE.reset(bound)

    def after_fork(self) -> None:
        """In a forked child: new locks, and no connection inherited from the parent."""
        self._state_lock = threading.Lock()
        self._recover_lock = threading.Lock()
        self._times.after_fork()
        if self._fallback is not None:
            self._fallback.after_fork()
        self._reset_after_fork()

    def close(self) -> None:
        """Close this process's connection to the backend."""
        self._close()

    # -- outage bookkeeping --------------------------------------------------------------

    def _skip_backend(self, now: float) -> bool:
        """True while in an outage, except for one probe of the backend per interval."""
        with self._state_lock:
            if not self._down:
                return False
            if now >= self._probe_at:
                self._probe_at = now + RETRY_BACKEND_EVERY
                return False
            return True

    def _mark_down(self, exc: BaseException) -> None:
        with self._state_lock:
            first = not self._down
            self._down = True
            self._recovering = False
            self._probe_at = time.monotonic() + RETRY_BACKEND_EVERY
        if first:
            then = (
                "limiting per process until it is back"
                if self._fallback is not None
                else "calls fail with BackendUnavailable until it is back"
            )
            log.warning(
                "syncfetch: rate-limit backend %s is unavailable (%s: %s); %s",
                self.name,
                type(exc).__name__,
                exc,
                then,
                extra={"syncfetch_backend": self.name},
            )
            on_backend = self.on_backend
            if on_backend is not None:
                on_backend(False, f"{self.name}: {type(exc).__name__}: {exc}")

    def _mark_up(self) -> None:
        with self._state_lock:
            was_down, self._down = self._down, False
            self._recovering = False
        if was_down:
            log.info(
                "syncfetch: rate-limit backend %s is back",
                self.name,
                extra={"syncfetch_backend": self.name},
            )
            on_backend = self.on_backend
            if on_backend is not None:
                on_backend(True, self.name)

    def _rounds(
        self,
        key: str,
        deadline: float | None,
        backend: Callable[[float], Token],
        fallback: Callable[[], Token],
        outage: list[tuple[str, int, int]],
        record: Callable[[], None],
    ) -> Token:
        """A token from the backend (``backend(start)``), or from the per-process
        fallback (``fallback()``) while the backend is down: :meth:`acquire` and
        :meth:`take` alike. ``outage``: ``(key, longest window ms, cost)`` to note for the
        backend's return when the token comes from the fallback; ``record`` counts a
        backend token in the fallback.

        A second round only when the backend came back while this call waited for a
        fallback token (that token then stays counted here, harmless): the backend,
        which now knows the outage's tokens, decides.
        """
        start = time.monotonic()
        for last_round in (False, True):
            if self._fallback is not None and self._skip_backend(time.monotonic()):
                token = self._from_fallback(key, start, fallback, outage, only_while_down=True)
                if token is not None:
                    return token
            token = self._from_backend(
                key, deadline, start, backend, fallback, outage, record, last_round
            )
            if token is not None:
                return token
        raise AssertionError("unreachable: the last round always returns a token")

    def _from_backend(
        self,
        key: str,
        deadline: float | None,
        start: float,
        backend: Callable[[float], Token],
        fallback: Callable[[], Token],
        outage: list[tuple[str, int, int]],
        record: Callable[[], None],
        last_round: bool,
    ) -> Token | None:
        """A token from the backend, or from the fallback if the backend fails.

        :returns: ``None`` (not in the ``last_round``) when the backend failed, and came
            back while this call waited for a fallback token.
        """
        bound = BACKEND_DEADLINE.set(math.inf if deadline is None else deadline)
        try:
            if self._fallback is not None and (self._down or self._outage):
                self._recover()
            token = backend(start)
        except RequestException:
            # RateLimitExceeded (max_wait) and SessionClosed are answers, not backend
            # failures; requests' exceptions are OSErrors, so catch them first.
            raise
        except OutOfTime as exc:
            raise RateLimitExceeded(
                f"rate-limit backend {self.name} stayed busy past max_wait", key=key
            ) from exc
        except self._errors as exc:
            self.sleep(0)  # closed meanwhile (close() cut the connection): SessionClosed
            self._mark_down(exc)
            if self._fallback is None:
                raise BackendUnavailable(
                    f"rate-limit backend {self.name} is unavailable: {exc}"
                ) from exc
            return self._from_fallback(key, start, fallback, outage, only_while_down=not last_round)
        finally:
            BACKEND_DEADLINE.reset(bound)
        if self._down:
            self._mark_up()
        if self._fallback is not None:
            record()
        token.on_sent = self.sent
        return token

    def _from_fallback(
        self,
        key: str,
        start: float,
        fallback: Callable[[], Token],
        outage: list[tuple[str, int, int]],
        *,
        only_while_down: bool,
    ) -> Token | None:
        """A token from the fallback, noted for the backend's return.

        :returns: ``None`` if ``only_while_down`` and the backend came back meanwhile.
        """
        token = fallback()
        now = time.monotonic()
        # Under the lock that _recover marks the backend up with: a fallback token is
        # either in _outage before the backend is up (and written to it first), or not
        # used at all.
        with self._state_lock:
            if only_while_down and (self._recovering or not self._down):
                return None
            for noted, horizon, cost in outage:
                self._outage.extend([(noted, now, horizon)] * cost)
            self._trim_outage(now)
        return Token(key, _FallbackHandle(token), now - start, on_sent=self.sent)

    def _trim_outage(self, now: float) -> None:
        """Drop the oldest outage tokens that have left their window. Caller holds
        ``_state_lock``."""
        outage = self._outage
        while outage and (now - outage[0][1]) * 1000 >= outage[0][2]:
            outage.popleft()

    def _recover(self) -> None:
        """Write the tokens taken from the fallback within the longest window into the
        backend (dated as late as settle could have dated them), so that everyone counts
        them; no fallback token is used from then on, unless the backend fails again
        (the caller's take marks it up or down). On failure the tokens are kept for the
        next try."""
        bound = BACKEND_DEADLINE.get()
        wait = -1.0 if bound is None or bound == math.inf else max(0.0, bound - time.monotonic())
        if not self._recover_lock.acquire(timeout=wait):
            raise OutOfTime(f"{self.name}: tokens of the outage still being written")
        try:
            replayed = self._write_outage()
        finally:
            self._recover_lock.release()
        if replayed:
            log.info(
                "syncfetch: %d tokens taken while %s was unavailable are now counted in it",
                replayed,
                self.name,
                extra={"syncfetch_backend": self.name},
            )

    def _write_outage(self) -> int:
        """The loop of :meth:`_recover`; caller holds ``_recover_lock``."""
        replayed = 0
        while True:
            with self._state_lock:
                self._recovering = self._down
                taken, self._outage = self._outage, collections.deque()
                if not taken:
                    return replayed
            now = time.monotonic()
            ages = [
                (key, max(0, math.floor((now - at) * 1000) - self._settle_cap_ms), horizon)
                for key, at, horizon in taken
                if (now - at) * 1000 < horizon
            ]
            try:
                if ages:
                    self._replay(ages)
            except BaseException:
                with self._state_lock:
                    taken.extend(self._outage)
                    self._outage = taken
                raise
            replayed += len(ages)

    def backend_down(self) -> bool:
        """Whether the last use of the backend failed (for tests and stats)."""
        return self._down

    # -- what a backend implements -------------------------------------------------------

    def _take(self, key: str, deadline: float | None, start: float) -> Token:
        raise NotImplementedError

    def _settle(self, token: Token) -> None:
        raise NotImplementedError

    def _sent(self, token: Token) -> None:
        raise NotImplementedError

    def _pause(self, key: str, seconds: float) -> None:
        raise NotImplementedError

    def _paused_for(self, key: str) -> float:
        raise NotImplementedError

    def _replay(self, ages: list[tuple[str, int, int]]) -> None:
        """Add one token per ``(key, age in ms, longest window in ms)``, dated that long
        before the backend's now, kept for that window."""
        raise NotImplementedError

    def _take_many(
        self,
        key: str,
        charges: Sequence[Charge],
        deadline: float | None,
        start: float,
        priority: int,
    ) -> Token:
        """Take every charge (``cost`` tokens of its ``key`` under its ``windows``, the
        margin included) in one atomic step, all or nothing, waiting as
        :meth:`Limiter.take` describes; ``priority`` orders waiters where supported.
        The token's handle is the backend's own: :meth:`_sent`, :meth:`_settle` and
        :meth:`_correct` must know it."""
        raise ValueError(f"costs and routes are not supported by {self.name} yet")

    def _correct(self, token: Token, key: str, cost: int) -> None:
        """Make the charge of ``token`` on ``key`` weigh ``cost`` (see :meth:`correct`)."""

    def _reset_after_fork(self) -> None:
        raise NotImplementedError

    def _fork_lock(self) -> threading.Lock | None:
        """A lock to hold across ``fork()`` so that no thread is inside the backend's
        client library at that moment (``None``: no need)."""
        return None

    def _close(self) -> None:
        raise NotImplementedError

    def _sent_time(self, token: Token, taken_ms: int, taken_at: float) -> int:
        """The date of ``token`` at its send: ``token.sent`` plus ``arrival``, on the
        backend's clock, measured as in :meth:`_settled_time`."""
        assert token.sent is not None
        return taken_ms + max(0, math.ceil((token.sent + self.arrival - taken_at) * 1000))

    def _settled_time(self, token: Token, taken_ms: int, taken_at: float) -> int:
        """The date of ``token``, taken at ``taken_ms`` on the backend's clock.

        The send noted on the token plus ``arrival``, later by any excess over the key's
        usual answer time, never later than the answer (see ``ResponseTimes``), measured
        with the local monotonic clock from ``taken_at``, a moment at or before the
        backend read its clock: so the result is never earlier than the backend's time
        then; the backend's clock need not be read again, and wall-clock steps do not
        matter.
        """
        date = self._times.date(token, self.arrival, time.monotonic())
        return taken_ms + max(0, math.ceil((date - taken_at) * 1000))


def raise_if_late(key: str, wait_ms: int, deadline: float | None) -> None:
    """Raise ``RateLimitExceeded`` if waiting ``wait_ms`` would pass ``deadline``."""
    if deadline is not None and time.monotonic() + wait_ms / 1000 > deadline:
        wait = wait_ms / 1000
        raise RateLimitExceeded(
            f"no rate-limit token for {key} within max_wait (next in {wait:.3f} s)",
            key=key,
            retry_after=wait,
        )


# A waiter refreshes its ticket every time it wakes; one that has not done so this long
# after its planned wake-up is presumed dead.
TICKET_GRACE_MS = 2000


def _lock_all() -> None:
    """Before fork: wait (up to a second each) for in-flight SQLite transactions, so no
    thread is inside SQLite, holding its internal mutexes, at the moment of fork (the
    child would deadlock opening its own connection)."""
    for limiter in list(_LIVE):
        lock = limiter._fork_lock()
        if lock is not None and lock.acquire(timeout=1.0):
            _HELD.append(lock)


def _unlock_all() -> None:
    while _HELD:
        _HELD.pop().release()


def _reset_all() -> None:
    # The locks taken before the fork are replaced, in the child, by each limiter's
    # after_fork(), which the owning Session's fork hook calls (Pipeline.after_fork).
    _HELD.clear()


# Locks taken by _lock_all, released in the parent after fork (replaced in the child).
_HELD: list[threading.Lock] = []
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_lock_all, after_in_parent=_unlock_all, after_in_child=_reset_all)

"""The attempt loop: slot -> token -> send -> retry decision -> backoff with the slot released."""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from requests import PreparedRequest, Response
from requests.adapters import BaseAdapter
from requests.exceptions import ContentDecodingError, RequestException
from requests.structures import CaseInsensitiveDict
from requests.utils import rewind_body
from urllib3.util import Timeout as Urllib3Timeout

from . import _timing
from ._adaptive import AdaptiveLimiter
from ._body import consume_quietly, drain_undecoded, read_body
from ._budget import BudgetTracker
from ._events import MIN_WAIT, Event, Hub, redacted
from ._exceptions import DeadlineExceeded, RateLimitExceeded, SessionClosed
from ._feedback import COOLDOWN_STATUSES, is_throttle, server_wait
from ._options import UNSET, CallOptions
from ._redact import safe_url
from ._retry import (
    RetryPolicy,
    nothing_sent,
    parse_retry_after,
    replayable_body,
    retryable_exception,
)
from ._slots import Lease, Permits, Slots
from ._stats import StatsRecorder
from ._stores.base import Charge, Limiter, Token
from ._wire import SENDING

if TYPE_CHECKING:
    from ._routes import RouteTable

log = logging.getLogger("syncfetch")

_DEFAULT_PORTS = {"http": 80, "https": 443}
SESSION_KEY = "*"
_BUDGET_SPENT = "retry budget spent"


@dataclasses.dataclass
class Call:
    """State of one user-facing call, shared by its redirect hops (same thread)."""

    owner: object
    deadline: float | None
    attempts: int = 0
    #: ``time.monotonic()`` when the call began (a route's own deadline counts from it).
    started: float = 0.0
    #: The pipeline's ``closing`` event when the call first reached it: close() sets
    #: that event and then installs a new one, so a call started before close() still
    #: sees it set (in every wait, and before each attempt), and one started after
    #: does not.
    closing: threading.Event | None = None
    #: Numbers the call's events (set only while an ``on_event`` hook is set).
    id: int = 0
    #: The call's settings (the session's with its overrides); None: the pipeline's.
    options: CallOptions | None = None
    #: Tokens each attempt takes (``cost=`` of the call; routes may charge their own).
    cost: int = 1
    #: ``priority=`` of the call: higher takes a free token ahead of waiting lower ones.
    priority: int = 0


#: The call being sent on this thread; redirect hops find their call's deadline here.
CURRENT_CALL: contextvars.ContextVar[Call | None] = contextvars.ContextVar(
    "syncfetch_call", default=None
)


_ORIGIN = re.compile(r"[^:/?#]+://[^/?#]*")


def bucket_key(url: str | None, per_host: bool) -> str:
    """``scheme://host:port`` for per-host limits, ``"*"`` for one session-wide bucket."""
    if not per_host or not url:
        return SESSION_KEY
    match = _ORIGIN.match(url)
    return _origin_key(match.group() if match else url)


@functools.lru_cache(maxsize=4096)
def _origin_key(origin: str) -> str:
    # Cached: a session talks to a handful of origins, and parsing one costs
    # microseconds on every call.
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return SESSION_KEY
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if port is None:
        port = _DEFAULT_PORTS.get(scheme)
    return f"{scheme}://{host}:{port}" if port is not None else f"{scheme}://{host}"


def _timeout_pair(timeout: Any) -> tuple[Any, Any]:
    """``(connect, read)`` of a requests timeout, refused as requests' adapter refuses it.

    :raises ValueError: requests' own message, for a tuple that is not a valid pair or a
        value that is not a number > 0 or ``None``.
    """
    if isinstance(timeout, tuple):
        try:
            connect, read = timeout
            Urllib3Timeout(connect=connect, read=read)
        except ValueError:
            raise ValueError(
                f"Invalid timeout {timeout}. Pass a (connect, read) timeout tuple, "
                "or a single float to set both timeouts to the same value."
            ) from None
        return connect, read
    Urllib3Timeout(connect=timeout, read=timeout)  # raises requests' ValueError
    return timeout, timeout


def _attempt_timeout(timeout: Any, deadline: float | None) -> Any:
    """Shrink the per-attempt timeout to the time left before the deadline."""
    if isinstance(timeout, Urllib3Timeout):
        timeout = (timeout.connect_timeout, timeout.read_timeout)
    if deadline is None:
        return timeout  # the adapter validates it
    left = max(deadline - time.monotonic(), 0.001)
    if timeout is None:
        return (left, left)
    connect, read = _timeout_pair(timeout)
    return (
        left if connect is None else min(connect, left),
        left if read is None else min(read, left),
    )


def _read_timeout(timeout: Any) -> float | None:
    """The read part of a requests timeout (a number, a pair, or None)."""
    if isinstance(timeout, tuple):
        timeout = timeout[1]
    return timeout if isinstance(timeout, (int, float)) else None


def _route_options(
    charges: list[Charge], options: CallOptions, timeout: Any
) -> tuple[CallOptions, Any, bool]:
    """The call's ``options`` and ``timeout`` with its routes' own ``retry``,
    ``max_wait`` and ``timeout``: for each, the most specific route setting it (charges
    run least specific first), unless the call set it itself.

    :returns: the options, the timeout, and whether the retry policy is a route's.
    """
    changes: dict[str, Any] = {}
    for name in ("retry", "max_wait", "timeout"):
        if name in options.given:
            continue
        for charge in reversed(charges):
            value = getattr(charge.route, name, UNSET)
            if value is not UNSET:
                changes[name] = value
                break
    if not changes:
        return options, timeout, False
    timeout = changes.pop("timeout", timeout)
    if changes:
        options = dataclasses.replace(options, **changes)
    return options, timeout, "retry" in changes


def _settles(charges: list[Charge]) -> bool:
    """Whether a route of ``charges`` has a ``settle`` function."""
    return any(c.route is not None and c.route.settle is not None for c in charges)


def _mentions_quota(headers: Any) -> bool:
    """Whether any header name could carry a quota (it mentions "rate" or "limit").

    A parser of a new quota header must keep this true for its header's name.
    """
    # requests keeps lowercased names in CaseInsensitiveDict._store: one pass over them
    # costs less than looking up each name the parsers know.
    names = headers._store if isinstance(headers, CaseInsensitiveDict) else headers
    return any("rate" in n or "limit" in n for n in map(str.lower, names))


class _SettlingResponse(Response):
    """A streamed response whose route settles from its body: read through ``content``
    (also ``text`` and ``json()``), the settle runs once the body is stored, not at the
    release of the connection inside the read (where the body is not there yet)."""

    _syncfetch_reading = False
    _syncfetch_pending: Callable[[], None] | None = None

    @property
    def content(self) -> Any:
        self._syncfetch_reading = True
        try:
            body = Response.content.fget(self)  # type: ignore[attr-defined]
        finally:
            self._syncfetch_reading = False
        pending, self._syncfetch_pending = self._syncfetch_pending, None
        if pending is not None:
            try:
                pending()
            except Exception as exc:  # never into the caller reading the body
                log.warning("syncfetch: settling a streamed response failed: %r", exc)
        return body


def _hold_until_closed(
    resp: Response, lease: Lease, on_release: Callable[[], None] | None = None
) -> None:
    """Keep a streamed response's slot until its connection is released or it is collected.

    :param on_release: called once, when the connection is first released (the body read
        to its end, or the response closed), before the slot is freed; whatever it
        raises is logged, never raised into the reader.
    """
    raw = resp.raw
    release_conn = getattr(raw, "release_conn", None)
    if release_conn is not None:
        # A lock taken once, never released: on_release runs at most once, whichever
        # thread releases first (the reader, or one closing the response).
        once = threading.Lock()

        def release_then_free() -> None:
            try:
                release_conn()
            finally:
                try:
                    if on_release is not None and once.acquire(blocking=False):
                        on_release()
                except Exception as exc:  # never into the caller reading the body
                    log.warning("syncfetch: settling a streamed response failed: %r", exc)
                finally:
                    lease.release()

        raw.release_conn = release_then_free
    # A response dropped unread would hold its slot and its socket for ever: when it
    # is collected, close the connection and free the slot.
    weakref.finalize(resp, _close_and_free, raw, lease)


def _close_and_free(raw: Any, lease: Lease) -> None:
    try:
        raw.close()
    finally:
        lease.release()


class Pipeline:
    """Everything a session's attempts share: policy, limiter, slots, stats."""

    def __init__(
        self,
        *,
        policy: RetryPolicy,
        limiter: Limiter,
        slots: Slots,
        per_host: bool,
        max_wait: float | None,
        stats: StatsRecorder,
        rate_limit_headers: bool = True,
        adaptive: AdaptiveLimiter | None = None,
        routes: RouteTable | None = None,
        windows: tuple[tuple[int, int], ...] = (),
    ) -> None:
        self.policy = policy
        #: Limits per route (None: the limiter's own rates, one bucket per key).
        self.routes = routes
        #: The session-wide rates as (limit, ms), for calls costing other than 1.
        self.windows = windows
        self.adaptive = adaptive
        self.rate_limit_headers = rate_limit_headers
        self.budget = BudgetTracker(policy.budget) if policy.budget is not None else None
        # Set by Session.close() (end_waits): every slot, limit, backoff and pause wait
        # of the calls started so far ends at once. Replaced, never cleared, so each
        # event is one generation of calls (see Call.closing).
        self.closing = threading.Event()
        limiter.sleep = self._sleep
        if adaptive is not None:
            adaptive._sleep = self._sleep
        self.limiter = limiter
        self.slots = slots
        self.per_host = per_host
        self.max_wait = max_wait
        #: What a call runs under unless it overrides some of it.
        self.options = CallOptions(retry=policy, max_wait=max_wait)
        self.stats = stats
        self.hub = Hub()
        # The hub while it has hooks, else None: the one test each emission point makes.
        self.events: Hub | None = None

    def set_hooks(self) -> None:
        """Start or stop emitting events, after the hub's hooks changed."""
        self.events = self.hub if self.hub.hooks or self.hub.senders else None
        if hasattr(self.limiter, "on_backend"):
            self.limiter.on_backend = self._on_backend if self.events is not None else None

    def _on_backend(self, up: bool, reason: str) -> None:
        events = self.events
        if events is not None:
            events.new("backend_up" if up else "backend_down", "", None, reason=reason)

    def after_fork(self) -> None:
        self.closing = threading.Event()
        self.hub.after_fork()
        for part in (self.limiter, self.slots, self.stats, self.budget, self.adaptive):
            if part is not None:
                part.after_fork()

    def end_waits(self) -> None:
        """Close the current generation: its waiters raise ``SessionClosed`` at once."""
        self.closing.set()
        self.slots.wake()

    def _closing(self) -> threading.Event:
        """The closing event of the call on this thread (its generation)."""
        call = CURRENT_CALL.get()
        if call is None:
            return self.closing
        if call.closing is None:
            call.closing = self.closing
        return call.closing

    def _sleep(self, seconds: float) -> None:
        """A limit wait: ends early, raising, when the session is closed."""
        if self._closing().wait(seconds):
            raise SessionClosed("the session was closed while this call waited")

    def _requested_sleep(self, seconds: float) -> None:
        """A backoff or server-requested wait: skipped in testing mode, ended by close()."""
        if seconds > 0 and not _timing.is_testing():
            self._sleep(seconds)

    def _wait_out_pause(
        self,
        key: str,
        limit: float | None,
        request: PreparedRequest | None,
        charges: list[Charge] | None = None,
    ) -> None:
        paused = self.limiter.paused_for(key, limit)
        if charges:
            # A pause of any route the call pays (its origin's or a more specific one).
            for charge in charges:
                if charge.key != key:
                    route_paused = self.limiter.paused_for(charge.key, limit)
                    if route_paused > paused:
                        paused, key = route_paused, charge.key
        if paused <= 0:
            return
        if paused > self.policy.retry_after_max or (
            limit is not None and time.monotonic() + paused > limit
        ):
            raise RateLimitExceeded(
                f"{key} is paused for {paused:.1f} s at the server's request",
                key=key,
                retry_after=paused,
            )
        self.stats.add(key, cooldown_wait=paused)
        events = self.events
        if events is not None and paused >= MIN_WAIT and request is not None:
            call = CURRENT_CALL.get()
            events.new(
                "wait",
                key,
                request.url,
                method=request.method,
                call=call.id if call is not None else 0,
                seconds=paused,
                wait="pause",
            )
        self._requested_sleep(paused)

    def _admit(
        self,
        key: str,
        deadline: float | None,
        request: PreparedRequest | None = None,
        options: CallOptions | None = None,
        charges: list[Charge] | None = None,
    ) -> tuple[Permits, Token, float, dict[str, float]]:
        """Wait out a pause, then take a slot, wait for the adaptive pace, take a token.

        The token comes last so it is spent right before the send, and no slot is held
        through a server-requested pause.

        :returns: the slot, the token, the send time (for adaptive feedback) and the
            waits, for the stats recorded with the attempt's outcome.
        """
        closing = self._closing()
        if closing.is_set():
            raise SessionClosed("the session was closed before this attempt")
        max_wait = (options or self.options).max_wait
        limit = None if max_wait is None else time.monotonic() + max_wait
        if deadline is not None:
            limit = deadline if limit is None else min(limit, deadline)
        # A pause that begins while this call waits for its slot or token does not stop
        # it: going back to wait would waste the token it holds (a window's worth, with
        # many threads waiting), which costs more than the one refusal it may collect.
        self._wait_out_pause(key, limit, request, charges)
        before_slot = time.monotonic()
        slot = self.slots.acquire(None if limit is None else limit - before_slot, key, closing)
        got_slot = time.monotonic()
        try:
            paced = 0.0
            if self.adaptive is not None:
                paced, _ = self.adaptive.acquire(key, limit)
            if charges is None:
                token = self.limiter.acquire(key, limit)
            else:  # all or nothing: no route's tokens are held while another's are awaited
                call = CURRENT_CALL.get()
                priority = call.priority if call is not None else 0
                token = self.limiter.take(key, charges, limit, priority)
            # A wait may have ended just as close() ran: nothing is sent after that.
            if closing.is_set():
                raise SessionClosed("the session was closed while this call waited")
        except BaseException:
            slot.release()
            raise
        waits = {"slot_wait": got_slot - before_slot, "token_wait": token.waited + paced}
        return slot, token, time.monotonic(), waits

    def send(self, adapter: BaseAdapter, request: PreparedRequest, **kwargs: Any) -> Response:
        """Send ``request`` through ``adapter`` with limits and retries.

        :param kwargs: the adapter's keyword arguments (``stream``, ``timeout``, ...).
        """
        call = CURRENT_CALL.get()
        deadline = call.deadline if call is not None else None
        options = call.options if call is not None and call.options is not None else self.options
        key = bucket_key(request.url, self.per_host)
        charges = self._charges(request, key, call)
        stream = bool(kwargs.get("stream"))
        timeout = kwargs.pop("timeout", None)
        if charges and self.routes is not None:
            options, timeout, own_retry = _route_options(charges, options, timeout)
            if own_retry and call is not None:
                # A route's own retry policy bounds this hop: its deadline counts from the
                # call's first hop. (The call's own deadline stays for the other hops.)
                limit = options.retry.deadline
                deadline = None if limit is None else call.started + limit
        policy = options.retry
        if deadline is not None and not isinstance(timeout, (Urllib3Timeout, type(None))):
            # Shrunk to the deadline below: refused first, as requests' adapter would.
            _timeout_pair(timeout)
        replayable = replayable_body(request)
        may_retry = replayable and policy.may_retry(request)
        waits: Iterator[float] | None = None  # made on the first retry: most calls need none
        attempt = 0
        last: Response | RequestException | None = None
        while True:
            attempt += 1
            if attempt > 1 and request._body_position is not None:
                rewind_body(request)
            try:
                if deadline is not None and time.monotonic() >= deadline:
                    raise DeadlineExceeded(
                        f"deadline of {policy.deadline} s passed", request=request
                    )
                slot, token, sent_at, counts = self._admit(key, deadline, request, options, charges)
            except RequestException as exc:
                self.stats.add(
                    key,
                    requests=int(attempt == 1),
                    rate_limited=int(isinstance(exc, RateLimitExceeded)),
                )
                if self.events is not None and isinstance(exc, RateLimitExceeded):
                    self.events.new(
                        "rate_limited",
                        key,
                        request.url,
                        method=request.method,
                        call=call.id if call is not None else 0,
                        attempt=attempt,
                        error=type(exc).__name__,
                    )
                if last is None or isinstance(exc, SessionClosed):
                    raise
                return self._give_up(request, last, f"no capacity for a retry ({exc})", policy)
            counts["attempts"] = 1
            counts["requests"] = int(attempt == 1)
            counts["retries"] = int(attempt > 1)
            if call is not None:
                call.attempts += 1
            if self.events is not None:
                _emit_attempt(self.events, request, key, call, attempt, counts)
            outcome: Response | RequestException
            try:
                outcome = self._attempt(
                    adapter,
                    request,
                    key,
                    slot,
                    token,
                    sent_at,
                    counts,
                    timeout,
                    deadline,
                    stream,
                    kwargs,
                    policy,
                    charges,
                )
            except RequestException as exc:
                if isinstance(exc, DeadlineExceeded):
                    raise
                if not (
                    replayable and ((may_retry and retryable_exception(exc)) or nothing_sent(exc))
                ):
                    raise
                outcome = exc
            if isinstance(outcome, Response) and not (
                may_retry and self._retryable(outcome, policy)
            ):
                return outcome
            why = self._why_not_retry(key, attempt, policy)
            if why:
                if why is _BUDGET_SPENT and self.events is not None:
                    self.events.new(
                        "budget_spent",
                        key,
                        request.url,
                        method=request.method,
                        call=call.id if call is not None else 0,
                        attempt=attempt,
                    )
                return self._give_up(request, outcome, why, policy)
            waits = waits or policy.waits()
            wait = policy.jittered(next(waits))
            if isinstance(outcome, Response):
                retry_after = (
                    parse_retry_after(outcome.headers.get("Retry-After"))
                    if policy.respect_retry_after
                    else None
                )
                if retry_after is not None:
                    if retry_after > policy.retry_after_max:
                        return self._give_up(
                            request,
                            outcome,
                            f"Retry-After {retry_after:.0f} s > retry_after_max",
                            policy,
                        )
                    # The server's figure is not shortened by jitter.
                    wait = retry_after
                reason = str(outcome.status_code)
            else:
                reason = type(outcome).__name__
            if not self._backoff(request, wait, deadline, attempt, reason):
                return self._give_up(
                    request, outcome, "deadline leaves no time for a retry", policy
                )
            last = outcome

    def _charges(
        self, request: PreparedRequest, key: str, call: Call | None
    ) -> list[Charge] | None:
        """What each attempt of ``request`` pays: None for one token of ``key`` on the
        limiter's own rates (the common case), else every route's cost.

        :raises ValueError: when a route's cost function returns no whole number >= 0.
        """
        cost = call.cost if call is not None else 1
        if self.routes is not None:
            return self.routes.match(request, cost, self.per_host)
        if cost == 1 and (call is None or call.priority == 0):
            return None
        return [Charge(key, self.windows, cost)]

    def _correct(self, charges: list[Charge], token: Token, resp: Response, read: bool) -> None:
        """Correct each route's charge by what the response says it cost (``settle``,
        ``free`` statuses)."""
        from ._routes import corrected  # here: _routes imports this module

        for charge in charges:
            route = charge.route
            if route is None or not (route.free or route.settle is not None):
                continue
            cost = corrected(route, resp, charge.cost, read)
            if cost != charge.cost:
                self.limiter.correct(token, charge.key, cost)

    def _settle_later(
        self, charges: list[Charge], token: Token, resp: Response
    ) -> Callable[[], None]:
        """What settles a streamed ``resp`` once its body is read or it is closed.

        It holds the response weakly: a strong reference from its connection's release
        would keep a dropped response from being collected (and its slot freed).
        """
        if type(resp) is Response:
            resp.__class__ = _SettlingResponse  # settles after `content` has the body
        ref = weakref.ref(resp)

        def settle() -> None:
            later = ref()
            if later is None:
                return
            if getattr(later, "_syncfetch_reading", False):
                # Released inside `content`: settled once the body is stored.
                later._syncfetch_pending = lambda: self._correct(charges, token, later, True)  # type: ignore[attr-defined]
                return
            self._correct(charges, token, later, True)

        return settle

    def _retryable(self, resp: Response, policy: RetryPolicy) -> bool:
        statuses = policy.statuses
        return resp.status_code in statuses or (
            429 in statuses and is_throttle(resp.status_code, resp.headers)
        )

    def _attempt(
        self,
        adapter: BaseAdapter,
        request: PreparedRequest,
        key: str,
        slot: Permits,
        token: Token,
        sent_at: float,
        counts: dict[str, float],
        timeout: Any,
        deadline: float | None,
        stream: bool,
        kwargs: dict[str, Any],
        policy: RetryPolicy,
        charges: list[Charge] | None,
    ) -> Response:
        """One attempt on the wire, holding ``slot``; the slot is given back on every path.

        A final streamed response keeps its slot until it is consumed, closed or
        collected; any other response has been read and releases it here.
        """
        handed_over = False
        try:
            started = sent_at  # taken right after the token
            attempt_timeout = _attempt_timeout(timeout, deadline)
            if token.handle is None:  # no rate limit: nothing to date
                resp = adapter.send(request, timeout=attempt_timeout, **kwargs)
            else:
                # syncfetch's connections note on the token when the request left.
                sending = SENDING.set(token)
                try:
                    resp = adapter.send(request, timeout=attempt_timeout, **kwargs)
                finally:
                    SENDING.reset(sending)
                    self.limiter.settle(token)
            resp._syncfetch_wire_time = time.monotonic() - started  # type: ignore[attr-defined]
            try:
                # Server feedback pauses the most specific route the request paid.
                self._listen(charges[-1].key if charges else key, resp, request)
                if not stream:
                    try:
                        read_body(resp, deadline, _read_timeout(attempt_timeout))
                    except ContentDecodingError:
                        # requests drains a redirect without decoding it (followed or
                        # not): a broken body there never fails a call.
                        if not resp.is_redirect:
                            raise
                        drain_undecoded(resp)
            except BaseException:
                resp.close()
                raise
            if charges:
                # A streamed body is not read yet: free statuses now, settle once it has
                # been consumed or closed (below, or when its connection is released).
                self._correct(charges, token, resp, not stream)
            status = resp.status_code
            throttled = is_throttle(status, resp.headers)
            if self.adaptive is not None:
                self.adaptive.on_response(
                    key, sent_at, throttled or (status == 503 and "Retry-After" in resp.headers)
                )
            # The charges a streamed response settles once its body is read or closed.
            unsettled = charges if stream and charges and _settles(charges) else None
            if self._retryable(resp, policy):
                consume_quietly(resp)
                if unsettled:
                    self._correct(unsettled, token, resp, True)
            else:
                if self.budget is not None:
                    self.budget.record_success(key)  # an answer refunds the retry budget
                if stream:
                    # Released from several places (consumed, closed, collected): a lease
                    # makes the release happen once.
                    settle = self._settle_later(unsettled, token, resp) if unsettled else None
                    _hold_until_closed(resp, Lease(slot), settle)
                    handed_over = True
            self.stats.status(key, status, **counts)
            if self.events is not None:
                self._emit_outcome(request, key, resp, None)
            return resp
        except Exception as exc:
            self.stats.error(key, exc, **counts)
            if self.events is not None:
                self._emit_outcome(request, key, None, exc)
            raise
        finally:
            if not handed_over:
                slot.release()

    def _emit_outcome(
        self,
        request: PreparedRequest,
        key: str,
        resp: Response | None,
        exc: BaseException | None,
    ) -> None:
        """A ``"response"`` (or ``"error"``) event for the attempt just made."""
        events = self.events
        if events is None:
            return
        call = CURRENT_CALL.get()
        fields: dict[str, Any] = {
            "method": request.method,
            "call": call.id if call is not None else 0,
            "attempt": call.attempts if call is not None else 0,
        }
        if resp is not None:
            wire = getattr(resp, "_syncfetch_wire_time", None)
            events.new(
                "response", key, request.url, status=resp.status_code, seconds=wire, **fields
            )
        else:
            events.new("error", key, request.url, error=type(exc).__name__, **fields)

    def _why_not_retry(self, key: str, attempt: int, policy: RetryPolicy) -> str:
        """Why the attempt just failed may not be retried ("" when it may)."""
        if attempt > policy.retries:
            return "retries exhausted"
        if self.budget is not None and not self.budget.try_spend(key):
            self.stats.add(key, budget_exhausted=1)
            return _BUDGET_SPENT
        return ""

    def _listen(self, key: str, resp: Response, request: PreparedRequest) -> None:
        """Pause the whole key when the response asks for a wait (Retry-After, spent quota)."""
        if resp.status_code not in COOLDOWN_STATUSES and not _mentions_quota(resp.headers):
            return  # most responses: no header lookups at all
        policy = self.policy
        wait, why = server_wait(
            resp.status_code,
            resp.headers,
            retry_after=policy.respect_retry_after,
            quota=self.rate_limit_headers,
        )
        if wait is None or not wait > 0:
            return
        if wait > policy.retry_after_max:
            # Capped, as every server-given wait: a server (or a bug) asking for 10**30 s
            # must not stop a key for the life of the process. After the cap, the next
            # call probes the server, which answers again if it still refuses.
            why = f"{why}, {wait:.0f} s asked, capped at retry_after_max"
            wait = policy.retry_after_max
            if wait <= 0:
                return
        self.limiter.pause(key, wait)
        self.stats.add(key, cooldowns=1)
        if self.events is not None:
            self.events.new(
                "pause", key, request.url, method=request.method, seconds=wait, reason=why
            )
        log.info(
            "syncfetch: pausing every request to %s for %.2f s: %s",
            key,
            wait,
            why,
            extra={"syncfetch_pause": wait, "syncfetch_key": key, "syncfetch_reason": why},
        )

    def _backoff(
        self, request: PreparedRequest, wait: float, deadline: float | None, attempt: int, why: str
    ) -> bool:
        """Sleep before the next attempt, holding no slot; False if the deadline forbids it."""
        if deadline is not None and time.monotonic() + wait >= deadline:
            return False
        log.info(
            "syncfetch: retrying %s %s in %.2f s (attempt %d failed: %s)",
            request.method,
            safe_url(request.url),
            wait,
            attempt,
            why,
            extra={"syncfetch_wait": wait, "syncfetch_attempt": attempt, "syncfetch_reason": why},
        )
        key = bucket_key(request.url, self.per_host)
        self.stats.add(key, backoff_wait=wait)
        if self.events is not None:
            call = CURRENT_CALL.get()
            self.events.new(
                "retry",
                key,
                request.url,
                method=request.method,
                call=call.id if call is not None else 0,
                attempt=attempt,
                seconds=wait,
                reason=why,
            )
        self._requested_sleep(wait)
        return True

    def _give_up(
        self,
        request: PreparedRequest,
        last: Response | RequestException,
        why: str,
        policy: RetryPolicy,
    ) -> Response:
        """End a call on its last retryable outcome: return the response, raise the error."""
        key = bucket_key(request.url, self.per_host)
        self.stats.add(key, giveups=1)
        if self.events is not None:
            call = CURRENT_CALL.get()
            self.events.new(
                "giveup",
                key,
                request.url,
                method=request.method,
                call=call.id if call is not None else 0,
                attempt=call.attempts if call is not None else 0,
                status=last.status_code if isinstance(last, Response) else None,
                error=None if isinstance(last, Response) else type(last).__name__,
                reason=why,
            )
        outcome = last.status_code if isinstance(last, Response) else type(last).__name__
        if policy.retries:
            log.warning(
                "syncfetch: giving up on %s %s: %s (last: %s)",
                request.method,
                safe_url(request.url),
                why,
                outcome,
                extra={"syncfetch_reason": why},
            )
        if isinstance(last, Response):
            return last
        raise last


def _emit_attempt(
    events: Hub,
    request: PreparedRequest,
    key: str,
    call: Call | None,
    attempt: int,
    waits: dict[str, float],
) -> None:
    """The waits an attempt was admitted after, then the attempt itself."""
    method, number = request.method, call.attempts if call is not None else attempt
    call_id = call.id if call is not None else 0
    for name, wait in (("slot", waits["slot_wait"]), ("token", waits["token_wait"])):
        if wait >= MIN_WAIT:
            events.new(
                "wait", key, request.url, method=method, call=call_id, seconds=wait, wait=name
            )
    event = Event("attempt", key, redacted(request.url), method, call_id, number)
    events.attempt(event, request)

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
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from requests import PreparedRequest, Response
from requests.adapters import BaseAdapter
from requests.exceptions import RequestException
from requests.structures import CaseInsensitiveDict
from requests.utils import rewind_body
from urllib3.util import Timeout as Urllib3Timeout

from . import _timing
from ._adaptive import AdaptiveLimiter
from ._body import consume_quietly, read_body
from ._budget import BudgetTracker
from ._exceptions import DeadlineExceeded, RateLimitExceeded, SessionClosed
from ._feedback import COOLDOWN_STATUSES, is_throttle, server_wait
from ._limiter import Limiter, Token
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
from ._wire import SENDING

log = logging.getLogger("syncfetch")

_DEFAULT_PORTS = {"http": 80, "https": 443}
SESSION_KEY = "*"


@dataclasses.dataclass
class Call:
    """State of one user-facing call, shared by its redirect hops (same thread)."""

    owner: object
    deadline: float | None
    attempts: int = 0


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


def _attempt_timeout(timeout: Any, deadline: float | None) -> Any:
    """Shrink the per-attempt timeout to the time left before the deadline."""
    if isinstance(timeout, Urllib3Timeout):
        timeout = (timeout.connect_timeout, timeout.read_timeout)
    if deadline is None:
        return timeout
    left = max(deadline - time.monotonic(), 0.001)
    if timeout is None:
        return (left, left)
    if isinstance(timeout, tuple):
        connect, read = timeout
        return (
            left if connect is None else min(connect, left),
            left if read is None else min(read, left),
        )
    return (min(timeout, left), min(timeout, left))


def _read_timeout(timeout: Any) -> float | None:
    """The read part of a requests timeout (a number, a pair, or None)."""
    if isinstance(timeout, tuple):
        timeout = timeout[1]
    return timeout if isinstance(timeout, (int, float)) else None


def _mentions_quota(headers: Any) -> bool:
    """Whether any header name could carry a quota (it mentions "rate" or "limit").

    A parser of a new quota header must keep this true for its header's name.
    """
    # requests keeps lowercased names in CaseInsensitiveDict._store: one pass over them
    # costs less than looking up each name the parsers know.
    names = headers._store if isinstance(headers, CaseInsensitiveDict) else headers
    return any("rate" in n or "limit" in n for n in map(str.lower, names))


def _hold_until_closed(resp: Response, lease: Lease) -> None:
    """Keep a streamed response's slot until its connection is released or it is collected."""
    raw = resp.raw
    release_conn = getattr(raw, "release_conn", None)
    if release_conn is not None:

        def release_then_free() -> None:
            try:
                release_conn()
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
    ) -> None:
        self.policy = policy
        self.adaptive = adaptive
        self.rate_limit_headers = rate_limit_headers
        self.budget = BudgetTracker(policy.budget) if policy.budget is not None else None
        # Set by Session.close(): every limit, backoff and pause wait ends at once.
        self.closing = threading.Event()
        limiter.sleep = self._sleep
        self.limiter = limiter
        self.slots = slots
        self.per_host = per_host
        self.max_wait = max_wait
        self.stats = stats

    def after_fork(self) -> None:
        self.closing = threading.Event()
        for part in (self.limiter, self.slots, self.stats, self.budget, self.adaptive):
            if part is not None:
                part.after_fork()

    def _sleep(self, seconds: float) -> None:
        """A limit wait: ends early, raising, when the session is closed."""
        if self.closing.wait(seconds):
            raise SessionClosed("the session was closed while this call waited")

    def _requested_sleep(self, seconds: float) -> None:
        """A backoff or server-requested wait: skipped in testing mode, ended by close()."""
        if seconds > 0 and not _timing.is_testing():
            self._sleep(seconds)

    def _wait_out_pause(self, key: str, limit: float | None) -> None:
        paused = self.limiter.paused_for(key)
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
        self.stats.add(cooldown_wait=paused)
        self._requested_sleep(paused)

    def _admit(
        self, key: str, deadline: float | None
    ) -> tuple[Permits, Token, float, dict[str, float]]:
        """Wait out a pause, then take a slot, wait for the adaptive pace, take a token.

        The token comes last so it is spent right before the send, and no slot is held
        through a server-requested pause.

        :returns: the slot, the token, the send time (for adaptive feedback) and the
            waits, for the stats recorded with the attempt's outcome.
        """
        limit = None if self.max_wait is None else time.monotonic() + self.max_wait
        if deadline is not None:
            limit = deadline if limit is None else min(limit, deadline)
        # A pause that begins while this call waits for its slot or token does not stop
        # it: going back to wait would waste the token it holds (a window's worth, with
        # many threads waiting), which costs more than the one refusal it may collect.
        self._wait_out_pause(key, limit)
        before_slot = time.monotonic()
        slot = self.slots.acquire(None if limit is None else limit - before_slot, key)
        got_slot = time.monotonic()
        try:
            paced = 0.0
            if self.adaptive is not None:
                paced, _ = self.adaptive.acquire(key, limit)
            token = self.limiter.acquire(key, limit)
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
        policy = self.policy
        key = bucket_key(request.url, self.per_host)
        stream = bool(kwargs.get("stream"))
        timeout = kwargs.pop("timeout", None)
        replayable = replayable_body(request)
        may_retry = replayable and policy.may_retry(request)
        waits: Iterator[float] | None = None  # made on the first retry: most calls need none
        attempt = 0
        last: Response | RequestException | None = None
        if self.budget is not None:
            self.budget.record_request(key)
        while True:
            attempt += 1
            if attempt > 1 and request._body_position is not None:
                rewind_body(request)
            try:
                if deadline is not None and time.monotonic() >= deadline:
                    raise DeadlineExceeded(
                        f"deadline of {policy.deadline} s passed", request=request
                    )
                slot, token, sent_at, counts = self._admit(key, deadline)
            except RequestException as exc:
                self.stats.add(
                    requests=int(attempt == 1), rate_limited=int(isinstance(exc, RateLimitExceeded))
                )
                if last is None or isinstance(exc, SessionClosed):
                    raise
                return self._give_up(request, last, f"no capacity for a retry ({exc})")
            counts["attempts"] = 1
            counts["requests"] = int(attempt == 1)
            counts["retries"] = int(attempt > 1)
            if call is not None:
                call.attempts += 1
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
                )
            except RequestException as exc:
                if isinstance(exc, DeadlineExceeded):
                    raise
                if not (
                    replayable and ((may_retry and retryable_exception(exc)) or nothing_sent(exc))
                ):
                    raise
                outcome = exc
            if isinstance(outcome, Response) and not (may_retry and self._retryable(outcome)):
                return outcome
            why = self._why_not_retry(key, attempt)
            if why:
                return self._give_up(request, outcome, why)
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
                            request, outcome, f"Retry-After {retry_after:.0f} s > retry_after_max"
                        )
                    # The server's figure is not shortened by jitter.
                    wait = retry_after
                reason = str(outcome.status_code)
            else:
                reason = type(outcome).__name__
            if not self._backoff(request, wait, deadline, attempt, reason):
                return self._give_up(request, outcome, "deadline leaves no time for a retry")
            last = outcome

    def _retryable(self, resp: Response) -> bool:
        statuses = self.policy.statuses
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
                self._listen(key, resp)
                if not stream:
                    read_body(resp, deadline, _read_timeout(attempt_timeout))
            except BaseException:
                resp.close()
                raise
            status = resp.status_code
            throttled = is_throttle(status, resp.headers)
            if self.adaptive is not None:
                self.adaptive.on_response(
                    key, sent_at, throttled or (status == 503 and "Retry-After" in resp.headers)
                )
            if self._retryable(resp):
                consume_quietly(resp)
            elif stream:
                # Released from several places (consumed, closed, collected): a lease
                # makes the release happen once.
                _hold_until_closed(resp, Lease(slot))
                handed_over = True
            self.stats.status(status, **counts)
            return resp
        except Exception as exc:
            self.stats.error(exc, **counts)
            raise
        finally:
            if not handed_over:
                slot.release()

    def _why_not_retry(self, key: str, attempt: int) -> str:
        """Why the attempt just failed may not be retried ("" when it may)."""
        if attempt > self.policy.retries:
            return "retries exhausted"
        if self.budget is not None and not self.budget.try_spend(key):
            self.stats.add(budget_exhausted=1)
            return "retry budget spent"
        return ""

    def _listen(self, key: str, resp: Response) -> None:
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
        if wait is None or wait <= 0:
            return
        # The whole pause is kept, even past retry_after_max: calls then fail fast
        # with RateLimitExceeded instead of sending while the server still refuses.
        self.limiter.pause(key, wait)
        self.stats.add(cooldowns=1)
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
        self.stats.add(backoff_wait=wait)
        self._requested_sleep(wait)
        return True

    def _give_up(
        self, request: PreparedRequest, last: Response | RequestException, why: str
    ) -> Response:
        """End a call on its last retryable outcome: return the response, raise the error."""
        self.stats.add(giveups=1)
        outcome = last.status_code if isinstance(last, Response) else type(last).__name__
        if self.policy.retries:
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

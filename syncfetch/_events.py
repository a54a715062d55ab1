"""What a session tells its ``on_event`` hooks, and how it tells them.

The pipeline holds ``events``: ``None`` while no hook is set, so a session nobody
watches pays one attribute test per emission point and builds no event.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

from ._redact import safe_url

log = logging.getLogger("syncfetch")

EventKind = Literal[
    "call_start",
    "call_end",
    "attempt",
    "response",
    "error",
    "retry",
    "giveup",
    "pause",
    "wait",
    "rate_limited",
    "budget_spent",
    "backend_down",
    "backend_up",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened in a session, handed to its ``on_event`` hooks.

    Fields that do not apply to a kind are ``None``. The URL never carries
    credentials, query-string values or a fragment; headers and bodies are never
    included.

    Kinds: ``"call_start"``/``"call_end"`` (a user-facing call, retries and redirect
    hops included; ``call_end`` has the final ``status`` or ``error`` and ``seconds``
    it took), ``"attempt"`` (an attempt is about to be sent), ``"response"`` (its
    ``status``, ``seconds`` on the wire), ``"error"`` (it failed without a response:
    ``error``), ``"retry"`` (``seconds`` of backoff before attempt ``attempt + 1``,
    ``reason``), ``"giveup"`` (``reason``), ``"pause"`` (the server paused ``key``
    for ``seconds``: ``reason``), ``"wait"`` (``seconds`` waited for a ``"token"``,
    a ``"slot"`` or a ``"pause"``, named in ``wait``; only waits of 1 ms or more),
    ``"rate_limited"`` (``max_wait`` or the deadline ran out: ``error``),
    ``"budget_spent"`` (a retry refused by the retry budget), ``"backend_down"`` and
    ``"backend_up"`` (the shared limiter's backend, named in ``reason``).

    :ivar kind: what happened (see above).
    :ivar key: the bucket key (``scheme://host:port``, ``"*"``); ``""`` for backend events.
    :ivar url: the request's URL, redacted; ``""`` for backend events.
    :ivar method: the request's method.
    :ivar call: a number identifying the call, the same for all its events (0 if unknown).
    :ivar attempt: the attempt's number in its call, from 1, redirect hops included.
    :ivar status: the response's status code.
    :ivar seconds: the duration the kind is about (see above).
    :ivar wait: what a ``"wait"`` was for: ``"token"``, ``"slot"`` or ``"pause"``.
    :ivar reason: why (a retry, a give-up, a pause; the backend's name and failure).
    :ivar error: the exception's type name.
    """

    kind: EventKind
    key: str
    url: str
    method: str | None = None
    call: int = 0
    attempt: int = 0
    status: int | None = None
    seconds: float | None = None
    wait: str | None = None
    reason: str | None = None
    error: str | None = None


EventHook = Callable[[Event], object]

#: ``safe_url``, cached: a call's events all carry its URL, and parsing one costs microseconds.
redacted = functools.lru_cache(maxsize=1024)(safe_url)

#: Waits shorter than this are not reported as ``"wait"`` events (every call takes a
#: free slot in microseconds).
MIN_WAIT = 0.001


def hooks_of(on_event: EventHook | Iterable[EventHook] | None) -> list[EventHook]:
    """``on_event`` as a list of callables.

    :raises TypeError: naming the value, when it is neither a callable nor a list of them.
    """
    if on_event is None:
        return []
    hooks = [on_event] if callable(on_event) else on_event
    try:
        hooks = list(hooks)
    except TypeError:
        raise TypeError(
            f"on_event must be a callable or a list of callables, not {on_event!r}"
        ) from None
    for hook in hooks:
        if not callable(hook):
            raise TypeError(f"on_event must be a callable or a list of callables, not {hook!r}")
    return hooks


class Hub:
    """The hooks of one session, and the helpers that build and deliver its events.

    Hooks run on the thread where the event happens, in the order they were added. A
    hook that raises is logged (once per hook) and otherwise ignored.
    """

    def __init__(self) -> None:
        # _lock guards changes to hooks and _failed; emitting reads the tuple unlocked.
        self._lock = threading.Lock()
        self.hooks: tuple[EventHook, ...] = ()
        self.senders: tuple[Callable[[Event, Any], object], ...] = ()
        self._failed: set[int] = set()
        self._calls = itertools.count(1)

    def add_sender(self, hook: Callable[[Event, Any], object]) -> None:
        """Also hand each ``"attempt"`` event's ``PreparedRequest`` to ``hook`` (for
        integrations that add headers, as OpenTelemetry's trace context)."""
        with self._lock:
            self.senders = (*self.senders, hook)

    def attempt(self, event: Event, request: Any) -> None:
        """Emit an ``"attempt"`` event, then hand it and its request to the senders."""
        self.emit(event)
        for hook in self.senders:
            try:
                hook(event, request)
            except Exception:
                self._log_failure(hook)

    def add(self, hook: EventHook) -> None:
        with self._lock:
            self.hooks = (*self.hooks, hook)

    def remove(self, hook: EventHook) -> None:
        with self._lock:
            hooks = list(self.hooks)
            hooks.remove(hook)
            self.hooks = tuple(hooks)

    def emit(self, event: Event) -> None:
        """Hand ``event`` to every hook; a failing hook never breaks the call."""
        for hook in self.hooks:
            try:
                hook(event)
            except Exception:
                self._log_failure(hook)

    def _log_failure(self, hook: object) -> None:
        if id(hook) not in self._failed:
            with self._lock:
                self._failed.add(id(hook))
            log.exception("syncfetch: on_event hook %r raised; later errors not logged", hook)

    def after_fork(self) -> None:
        """A new lock in a forked child: a parent thread may have held it at fork time."""
        self._lock = threading.Lock()

    def new(self, kind: EventKind, key: str, url: str | None, **fields: Any) -> None:
        """Build and emit an event; ``url`` is redacted here."""
        self.emit(Event(kind, key, redacted(url), **fields))

    # -- the call's boundaries (Session.send, Session.map) -------------------------------

    def call_start(self, call: Any, method: str | None, url: str | None, key: str) -> None:
        call.id = next(self._calls)
        self.new("call_start", key, url, method=method, call=call.id)

    def call_end(
        self, call: Any, method: str | None, url: str | None, key: str, start: float, outcome: Any
    ) -> None:
        """``outcome``: the response, the exception, a map() ``Result``, or ``None``."""
        response = getattr(outcome, "response", outcome)
        error = getattr(outcome, "error", outcome)
        self.new(
            "call_end",
            key,
            url,
            method=method,
            call=call.id,
            attempt=call.attempts,
            status=getattr(response, "status_code", None),
            seconds=time.monotonic() - start,
            error=type(error).__name__ if isinstance(error, BaseException) else None,
        )

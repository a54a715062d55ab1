"""OpenTelemetry traces and metrics for syncfetch sessions (``pip install 'syncfetch[otel]'``).

::

    import syncfetch, syncfetch.otel
    session = syncfetch.Session("10/s")
    syncfetch.otel.instrument(session)  # the global tracer and meter providers

Each call (one user-facing request, its retries and redirect hops included) is an
``INTERNAL`` span named after the method; each attempt on the wire is a ``CLIENT``
child span with the HTTP semantic conventions' attributes (``http.request.method``,
``url.full`` without credentials or query values, ``server.address``,
``server.port``, ``http.response.status_code``, ``http.request.resend_count`` from
the second attempt on, ``error.type``). Waits for tokens, slots and pauses, retries,
pauses and give-ups are events on the call's span. Every attempt is recorded in the
``http.client.request.duration`` histogram (seconds), and carries the trace context
(``traceparent``) of its own span.

With ``opentelemetry-instrumentation-requests`` (or ``-urllib3``) also on, a call made
through an instrumented session suppresses their spans and metrics for it, as HTTP
instrumentations do for each other: its spans are syncfetch's alone.
"""

from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context, metrics, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import Event, Session, __version__
from ._events import EventHook

__all__ = ["instrument"]

# The key HTTP instrumentations check (is_http_instrumentation_enabled) before making
# spans of their own; private in the API, hence looked up with a fallback.
_SUPPRESS_HTTP = getattr(context, "_SUPPRESS_HTTP_INSTRUMENTATION_KEY", None)

# The semantic conventions' advice for http.client.request.duration.
_BOUNDARIES = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)


def _server(url: str) -> dict[str, Any]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return {}
    attributes: dict[str, Any] = {"url.scheme": parts.scheme}
    if parts.hostname:
        attributes["server.address"] = parts.hostname
        attributes["server.port"] = port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    return attributes


class _Tracing:
    """Spans of the calls and attempts in flight, by call number."""

    def __init__(self, tracer_provider: Any, meter_provider: Any) -> None:
        self.tracer = trace.get_tracer("syncfetch", __version__, tracer_provider)
        meter = metrics.get_meter("syncfetch", __version__, meter_provider)
        kwargs: dict[str, Any] = {
            "unit": "s",
            "description": "Duration of HTTP client requests (each attempt on the wire).",
        }
        try:
            self.duration = meter.create_histogram(
                "http.client.request.duration",
                explicit_bucket_boundaries_advisory=_BOUNDARIES,
                **kwargs,
            )
        except TypeError:  # an API before the advisory parameter
            self.duration = meter.create_histogram("http.client.request.duration", **kwargs)
        # _lock guards _calls and _attempts (threads run calls at once).
        self._lock = threading.Lock()
        self._calls: dict[int, tuple[Any, object]] = {}  # call -> (span, context token)
        self._attempts: dict[int, tuple[Any, float, dict[str, Any]]] = {}

    def on_event(self, e: Event) -> None:
        kind = e.kind
        if kind == "call_start":
            self._call_start(e)
        elif kind == "call_end":
            self._call_end(e)
        elif kind in ("response", "error"):
            self._attempt_end(e)
        elif kind != "attempt":
            with self._lock:
                entry = self._calls.get(e.call)
            span = entry[0] if entry is not None else trace.get_current_span()
            attributes = {
                f"syncfetch.{name}": value
                for name in ("key", "attempt", "seconds", "wait", "reason", "status", "error")
                if (value := getattr(e, name)) is not None
            }
            span.add_event(f"syncfetch.{kind}", attributes)

    def _call_start(self, e: Event) -> None:
        method = e.method or "HTTP"
        span = self.tracer.start_span(
            method,
            kind=SpanKind.INTERNAL,
            attributes={"http.request.method": method, "url.full": e.url, **_server(e.url)},
        )
        ctx = trace.set_span_in_context(span)
        if _SUPPRESS_HTTP is not None:
            ctx = context.set_value(_SUPPRESS_HTTP, True, ctx)
        token = context.attach(ctx)
        with self._lock:
            self._calls[e.call] = (span, token)

    def _call_end(self, e: Event) -> None:
        with self._lock:
            entry = self._calls.pop(e.call, None)
        if entry is None:
            return
        span, token = entry
        span.set_attribute("syncfetch.attempts", e.attempt)
        if e.status is not None:
            span.set_attribute("http.response.status_code", e.status)
        error = e.error or (str(e.status) if e.status is not None and e.status >= 400 else None)
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR))
        span.end()
        context.detach(token)  # type: ignore[arg-type]

    def on_send(self, e: Event, request: Any) -> None:
        """An attempt: its span, and its trace context in the request's headers."""
        if not e.call:
            return  # a call begun before the hook was added
        with self._lock:
            entry = self._calls.get(e.call)
        parent = trace.set_span_in_context(entry[0]) if entry is not None else None
        method = e.method or "HTTP"
        attributes: dict[str, Any] = {"http.request.method": method, **_server(e.url)}
        span_attributes = {**attributes, "url.full": e.url}
        if e.attempt > 1:
            span_attributes["http.request.resend_count"] = e.attempt - 1
        span = self.tracer.start_span(
            method, context=parent, kind=SpanKind.CLIENT, attributes=span_attributes
        )
        propagate.inject(request.headers, context=trace.set_span_in_context(span))
        with self._lock:
            self._attempts[e.call] = (span, time.monotonic(), attributes)

    def _attempt_end(self, e: Event) -> None:
        with self._lock:
            entry = self._attempts.pop(e.call, None)
        if entry is None:
            return
        span, started, attributes = entry
        if e.status is not None:
            attributes["http.response.status_code"] = e.status
            span.set_attribute("http.response.status_code", e.status)
        error = e.error or (str(e.status) if e.status is not None and e.status >= 400 else None)
        if error is not None:
            attributes["error.type"] = error
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR))
        span.end()
        seconds = e.seconds if e.seconds is not None else time.monotonic() - started
        self.duration.record(seconds, attributes)


def instrument(
    session: Session, tracer_provider: Any = None, meter_provider: Any = None
) -> EventHook:
    """Trace ``session``'s calls and attempts, and record their durations.

    :param session: the session to instrument (for the rest of its life).
    :param tracer_provider: a ``TracerProvider``; ``None`` for the global one.
    :param meter_provider: a ``MeterProvider``; ``None`` for the global one.
    :returns: the event hook added.
    :raises TypeError: when ``session`` is not a :class:`syncfetch.Session`.
    """
    if not isinstance(session, Session):
        raise TypeError(f"instrument() needs a syncfetch.Session, not {session!r}")
    tracing = _Tracing(tracer_provider, meter_provider)
    hook: EventHook = tracing.on_event
    session._pipeline.hub.add_sender(tracing.on_send)
    session.add_event_hook(hook)
    return hook

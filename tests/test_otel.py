"""``syncfetch.otel``, with the OpenTelemetry SDK's in-memory exporter and reader."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import responses
from opentelemetry import context, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import syncfetch
import syncfetch.otel

URL = "http://user:pw@api.test/items?api_key=s3cret"
SAFE = "http://api.test/items?api_key=***"
ANY_ITEMS = re.compile(r"http://(user:pw@)?api\.test/items.*")


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture
def otel() -> Iterator[tuple[InMemorySpanExporter, InMemoryMetricReader, Callable[..., Any]]]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])

    def instrument(session: syncfetch.Session) -> None:
        syncfetch.otel.instrument(session, tracer_provider, meter_provider)

    yield exporter, reader, instrument
    meter_provider.shutdown()
    tracer_provider.shutdown()


def by_kind(spans: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.kind == kind), key=lambda s: s.start_time or 0)


def test_a_call_span_with_a_client_span_per_attempt(
    mocked: responses.RequestsMock, otel: Any
) -> None:
    exporter, reader, instrument = otel
    statuses, sent = [503, 200], []

    def reply(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        sent.append(request.headers["traceparent"])
        return statuses.pop(0), {}, ""

    mocked.add_callback(responses.GET, ANY_ITEMS, callback=reply)
    with syncfetch.Session(retry=syncfetch.RetryPolicy(retries=2)) as s:
        instrument(s)
        assert s.get(URL).status_code == 200
    spans = exporter.get_finished_spans()
    (call,) = by_kind(spans, SpanKind.INTERNAL)
    first, second = by_kind(spans, SpanKind.CLIENT)
    assert call.name == first.name == "GET"
    for attempt in (first, second):
        assert attempt.parent is not None and attempt.parent.span_id == call.context.span_id
        assert attempt.attributes is not None
        assert attempt.attributes["url.full"] == SAFE
        assert attempt.attributes["http.request.method"] == "GET"
        assert attempt.attributes["server.address"] == "api.test"
        assert attempt.attributes["server.port"] == 80
    assert first.attributes and second.attributes and call.attributes
    assert first.attributes["http.response.status_code"] == 503
    assert first.attributes["error.type"] == "503"
    assert first.status.status_code == StatusCode.ERROR
    assert "http.request.resend_count" not in first.attributes
    assert second.attributes["http.request.resend_count"] == 1
    assert second.attributes["http.response.status_code"] == 200
    assert "error.type" not in second.attributes
    assert call.attributes["http.response.status_code"] == 200
    assert call.attributes["syncfetch.attempts"] == 2
    assert [e.name for e in call.events] == ["syncfetch.retry"]
    # Each attempt carried its own span's trace context.
    assert [p.split("-")[2] for p in sent] == [
        format(a.context.span_id, "016x") for a in (first, second)
    ]
    for span in spans:
        assert "s3cret" not in str(span.attributes) and "pw@" not in str(span.attributes)

    data = reader.get_metrics_data()
    points = [
        point
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == "http.client.request.duration"
        for point in metric.data.data_points
    ]
    assert sorted(p.attributes["http.response.status_code"] for p in points) == [200, 503]
    assert all(p.count == 1 for p in points)
    assert all(p.attributes["server.address"] == "api.test" for p in points)
    assert "url.full" not in points[0].attributes  # high cardinality: spans only


def test_errors_waits_and_the_users_parent_span(mocked: responses.RequestsMock, otel: Any) -> None:
    exporter, _, instrument = otel
    mocked.get("http://down.test/", body=requests.ConnectionError("refused"))
    mocked.get("http://down.test/", body=requests.ConnectionError("refused"))
    tracer = trace.get_tracer("test", tracer_provider=TracerProvider())
    with syncfetch.Session(retry=1) as s, tracer.start_as_current_span("job") as job:
        instrument(s)
        with pytest.raises(requests.ConnectionError):
            s.get("http://down.test/")
    spans = exporter.get_finished_spans()
    (call,) = by_kind(spans, SpanKind.INTERNAL)
    assert call.parent is not None and call.parent.span_id == job.get_span_context().span_id
    assert call.attributes and call.attributes["error.type"] == "ConnectionError"
    attempts = by_kind(spans, SpanKind.CLIENT)
    assert [a.attributes["error.type"] for a in attempts if a.attributes] == ["ConnectionError"] * 2
    assert [e.name for e in call.events] == ["syncfetch.retry", "syncfetch.giveup"]
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_map_calls_are_spans_on_pool_threads(mocked: responses.RequestsMock, otel: Any) -> None:
    exporter, _, instrument = otel
    mocked.get(re.compile(r"http://api\.test/\d"))
    tracer = trace.get_tracer("test", tracer_provider=TracerProvider())
    with syncfetch.Session() as s, tracer.start_as_current_span("job") as job:
        instrument(s)
        results = list(s.map([f"http://api.test/{i}" for i in range(6)]))
    assert all(r.ok for r in results)
    spans = exporter.get_finished_spans()
    calls, attempts = by_kind(spans, SpanKind.INTERNAL), by_kind(spans, SpanKind.CLIENT)
    assert len(calls) == len(attempts) == 6
    # The span current around map() is every item's parent, on the pool's threads too.
    assert {c.parent.span_id for c in calls if c.parent} == {job.get_span_context().span_id}
    parents = {a.parent.span_id for a in attempts if a.parent}
    assert parents == {c.context.span_id for c in calls}


def test_http_instrumentations_are_suppressed_inside_a_call(
    mocked: responses.RequestsMock, otel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What opentelemetry-instrumentation-requests does: it wraps requests.Session.send
    and makes no span when the context suppresses HTTP instrumentation."""
    exporter, _, instrument = otel
    mocked.get("http://api.test/x")
    suppressed: list[bool] = []
    original = requests.Session.send

    def instrumented_send(self: requests.Session, request: Any, **kwargs: Any) -> Any:
        suppressed.append(bool(context.get_value(context._SUPPRESS_HTTP_INSTRUMENTATION_KEY)))
        return original(self, request, **kwargs)

    monkeypatch.setattr(requests.Session, "send", instrumented_send)
    with syncfetch.Session() as s:
        s.get("http://api.test/x")
        instrument(s)
        s.get("http://api.test/x")
        list(s.map(["http://api.test/x"]))
    assert suppressed == [False, True, True]
    assert len(exporter.get_finished_spans()) == 4


def test_with_the_real_requests_instrumentation_each_request_gets_one_client_span(
    mocked: responses.RequestsMock,
) -> None:
    # opentelemetry-instrumentation-requests wraps requests.Session.send for every session.
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    mocked.get("http://api.test/x")
    instrumentor = RequestsInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        with requests.Session() as plain:
            plain.get("http://api.test/x")
        assert len(by_kind(exporter.get_finished_spans(), SpanKind.CLIENT)) == 1
        with syncfetch.Session() as s:
            s.get("http://api.test/x")  # not instrumented by syncfetch: theirs only
            assert len(by_kind(exporter.get_finished_spans(), SpanKind.CLIENT)) == 2
            syncfetch.otel.instrument(s, tracer_provider, meter_provider)
            exporter.clear()
            s.get("http://api.test/x")
    finally:
        instrumentor.uninstrument()
        meter_provider.shutdown()
        tracer_provider.shutdown()
    spans = exporter.get_finished_spans()
    # Instrumented by syncfetch: its call span and one client span per attempt, no other.
    assert len(by_kind(spans, SpanKind.INTERNAL)) == 1
    assert len(by_kind(spans, SpanKind.CLIENT)) == 1

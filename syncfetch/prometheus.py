"""Prometheus metrics for syncfetch sessions (``pip install 'syncfetch[prometheus]'``).

::

    import syncfetch, syncfetch.prometheus
    session = syncfetch.Session("10/s")
    syncfetch.prometheus.instrument(session)  # the default registry

Labels are bounded: ``key`` is the bucket key (``scheme://host:port``), never a URL,
and past :data:`MAX_KEYS` keys, ``"(other)"``; ``outcome`` and ``reason`` are status
codes or exception type names.
"""

from __future__ import annotations

import threading
import weakref

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from . import Event, Session
from ._events import EventHook

__all__ = ["MAX_KEYS", "instrument"]

#: Distinct ``key`` label values per registry; later keys are counted as ``"(other)"``.
MAX_KEYS = 100

# Seconds: from a loopback call (ms) to a long Retry-After pause (minutes).
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _Metrics:
    """The metric families of one registry, shared by every session instrumented into it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        self.attempts = counter(
            "syncfetch_attempts", "Attempts sent, by outcome (status or error).", "key", "outcome"
        )
        self.retries = counter(
            "syncfetch_retries", "Retries decided, by reason (status or error).", "key", "reason"
        )
        self.giveups = counter(
            "syncfetch_giveups", "Calls that ended on a retryable failure.", "key"
        )
        self.responses_429 = counter("syncfetch_responses_429", "429 responses received.", "key")
        self.rate_limited = counter(
            "syncfetch_rate_limited", "Calls refused by max_wait (RateLimitExceeded).", "key"
        )
        self.budget_spent = counter(
            "syncfetch_budget_spent", "Retries refused by the retry budget.", "key"
        )
        self.pauses = counter("syncfetch_pauses", "Pauses a server asked for.", "key")
        self.pause_seconds = counter(
            "syncfetch_pause_seconds", "Seconds of pause the server asked for.", "key"
        )
        self.backend_outages = counter(
            "syncfetch_backend_outages", "Times the shared limit backend went down.", "backend"
        )
        self.backend_up = Gauge(
            "syncfetch_backend_up",
            "1 while the shared limit backend answers, 0 while it is down.",
            ["backend"],
            registry=registry,
        )
        self.wait = Histogram(
            "syncfetch_wait_seconds",
            "Waits of 1 ms or more, by kind: token, slot, pause, backoff.",
            ["key", "kind"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.duration = Histogram(
            "syncfetch_attempt_duration_seconds",
            "Time on the wire of attempts that got a response.",
            ["key"],
            buckets=_BUCKETS,
            registry=registry,
        )
        # _lock guards _keys (the key label values handed out).
        self._lock = threading.Lock()
        self._keys: set[str] = set()

    def key(self, key: str) -> str:
        if key in self._keys:
            return key
        with self._lock:
            if len(self._keys) >= MAX_KEYS:
                return "(other)"
            self._keys.add(key)
        return key

    def record(self, e: Event) -> None:
        kind = e.kind
        if kind == "response":
            key = self.key(e.key)
            self.attempts.labels(key, str(e.status)).inc()
            if e.seconds is not None:
                self.duration.labels(key).observe(e.seconds)
            if e.status == 429:
                self.responses_429.labels(key).inc()
        elif kind == "error":
            self.attempts.labels(self.key(e.key), e.error or "error").inc()
        elif kind == "retry":
            key = self.key(e.key)
            self.retries.labels(key, e.reason or "").inc()
            self.wait.labels(key, "backoff").observe(e.seconds or 0.0)
        elif kind == "wait":
            self.wait.labels(self.key(e.key), e.wait or "").observe(e.seconds or 0.0)
        elif kind == "giveup":
            self.giveups.labels(self.key(e.key)).inc()
        elif kind == "pause":
            key = self.key(e.key)
            self.pauses.labels(key).inc()
            self.pause_seconds.labels(key).inc(e.seconds or 0.0)
        elif kind == "rate_limited":
            self.rate_limited.labels(self.key(e.key)).inc()
        elif kind == "budget_spent":
            self.budget_spent.labels(self.key(e.key)).inc()
        elif kind in ("backend_down", "backend_up"):
            backend = (e.reason or "").partition(": ")[0]
            up = kind == "backend_up"
            self.backend_up.labels(backend).set(int(up))
            if not up:
                self.backend_outages.labels(backend).inc()


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()  # guards _BY_REGISTRY


def instrument(session: Session, registry: CollectorRegistry | None = None) -> EventHook:
    """Count ``session``'s attempts, retries, waits, 429s and pauses in Prometheus metrics.

    Sessions instrumented into the same registry share its metrics (their counts add
    up). Metric names: ``syncfetch_attempts_total{key,outcome}``,
    ``syncfetch_retries_total{key,reason}``, ``syncfetch_giveups_total{key}``,
    ``syncfetch_responses_429_total{key}``, ``syncfetch_rate_limited_total{key}``,
    ``syncfetch_budget_spent_total{key}``, ``syncfetch_pauses_total{key}``,
    ``syncfetch_pause_seconds_total{key}``, ``syncfetch_wait_seconds{key,kind}``
    (histogram), ``syncfetch_attempt_duration_seconds{key}`` (histogram),
    ``syncfetch_backend_up{backend}``, ``syncfetch_backend_outages_total{backend}``.

    :param session: the session to watch.
    :param registry: where the metrics live; ``None`` for ``prometheus_client.REGISTRY``.
    :returns: the event hook added; ``session.remove_event_hook(hook)`` stops counting.
    :raises TypeError: when ``session`` is not a :class:`syncfetch.Session`.
    """
    if not isinstance(session, Session):
        raise TypeError(f"instrument() needs a syncfetch.Session, not {session!r}")
    registry = REGISTRY if registry is None else registry
    with _LOCK:
        metrics = _BY_REGISTRY.get(registry)
        if metrics is None:
            metrics = _BY_REGISTRY[registry] = _Metrics(registry)
    hook: EventHook = metrics.record
    session.add_event_hook(hook)
    return hook

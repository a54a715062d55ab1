"""``syncfetch.Session``: a ``requests.Session`` whose every attempt goes through the pipeline."""

from __future__ import annotations

import functools
import os
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from datetime import timedelta
from typing import Any

import requests
from pyrate_limiter import Rate
from requests import PreparedRequest, Request, Response
from requests.adapters import BaseAdapter, HTTPAdapter

from ._adaptive import Adaptive, AdaptiveLimiter
from ._backends import make_limiter
from ._exceptions import SessionClosed
from ._executor import BoundedExecutor
from ._limiter import DEFAULT_ARRIVAL
from ._pipeline import CURRENT_CALL, Call, Pipeline
from ._rates import LimitsArg, normalize_limits
from ._result import Result
from ._retry import RetryPolicy
from ._slots import Slots
from ._stats import Stats, StatsRecorder
from ._wire import TimedAdapter


class _Unset:
    """Type of :data:`UNSET`."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "syncfetch.UNSET"

    def __reduce__(self) -> str:
        return "UNSET"


#: "Argument not passed": lets ``timeout=None`` (no timeout) differ from no timeout given.
UNSET: Any = _Unset()

DEFAULT_TIMEOUT = (3.05, 30.0)
# Covers millisecond rounding of the shared backends' token times; the delay between a
# token and the server counting its request is covered by dating it at the send
# (KeyedLimiter.settle).
DEFAULT_MARGIN = 0.002


def _check_timeout(timeout: Any) -> Any:
    if timeout is None:
        return None
    values = timeout if isinstance(timeout, tuple) else (timeout,)
    if len(values) not in (1, 2) or any(
        v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0)
        for v in values
    ):
        raise ValueError(
            "timeout must be None, seconds > 0, or a (connect, read) tuple of them, "
            f"not {timeout!r}"
        )
    return timeout


class _GatedAdapter(BaseAdapter):
    """Routes one call's sends through the pipeline; lives only for that call."""

    def __init__(self, pipeline: Pipeline, adapter: BaseAdapter) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.adapter = adapter

    def send(self, request: PreparedRequest, **kwargs: Any) -> Response:  # type: ignore[override]
        return self.pipeline.send(self.adapter, request, **kwargs)

    def close(self) -> None:
        self.adapter.close()


class Session(requests.Session):
    """A drop-in :class:`requests.Session` that never exceeds its limits.

    Every attempt on the wire, from any thread, takes a concurrency slot and then a
    rate-limit token; retryable failures are retried with backoff, holding no slot
    while they wait.

    :param limits: ``"10/second"``, a :class:`pyrate_limiter.Rate`, or a list of them;
        ``None`` for no rate limit. Rates that another rate already implies are dropped.
    :param per_host: one bucket per ``scheme://host:port`` (``True``) or one for the
        whole session (``False``).
    :param max_concurrency: attempts in flight at once across all threads; also the
        size of each connection pool.
    :param retry: a :class:`RetryPolicy`, a number of retries, or ``None``/``0`` for none.
    :param timeout: per-attempt timeout used when a call passes none: seconds or a
        ``(connect, read)`` tuple; ``None`` for no timeout.
    :param max_wait: longest a call waits for a slot or a token before raising
        :class:`RateLimitExceeded`; ``None`` waits as long as the limits require.
    :param max_workers: threads of the pool behind :meth:`submit` and :meth:`map`
        (started on first use); defaults to ``max_concurrency``.
    :param backend: where buckets live: ``"memory"`` (this process),
        ``"sqlite:///path.db"`` (processes of one machine), ``"redis://host:port/db"``
        or a ``redis.Redis`` client (many machines).
    :param on_backend_error: ``"raise"`` to fail calls with :class:`BackendUnavailable`
        while a shared backend is unreachable, ``"fallback"`` to limit per process meanwhile.
    :param rate_limit_headers: pause a bucket key when a response's ``RateLimit`` or
        ``X-RateLimit-*`` headers report its quota spent, until the reset they give.
    :param adaptive: ``True`` or an :class:`Adaptive` to let each key's rate follow the
        server's throttling (the limits become a ceiling); ``None``/``False`` for off.
    :param arrival_margin: seconds after a request leaves this process by which the
        server is assumed to have counted it (its own stamping delay); each token is
        dated that long after its request's send (later by any time its answer took
        beyond the host's usual), and never later than its answer.
    :raises ValueError: for an invalid argument, naming it.
    """

    __attrs__ = [  # noqa: RUF012 - requests declares it as a plain list
        *requests.Session.__attrs__,
        "limits",
        "per_host",
        "max_concurrency",
        "retry",
        "timeout",
        "max_wait",
        "max_workers",
        "backend",
        "on_backend_error",
        "rate_limit_headers",
        "adaptive",
        "arrival_margin",
    ]

    def __init__(
        self,
        limits: LimitsArg = None,
        *,
        per_host: bool = True,
        max_concurrency: int = 10,
        retry: RetryPolicy | int | None = RetryPolicy(),  # noqa: B008 - immutable value
        timeout: Any = DEFAULT_TIMEOUT,
        max_wait: float | None = None,
        max_workers: int | None = None,
        backend: Any = "memory",
        on_backend_error: str = "raise",
        rate_limit_headers: bool = True,
        adaptive: Adaptive | bool | None = None,
        arrival_margin: float = DEFAULT_ARRIVAL,
    ) -> None:
        if (
            isinstance(max_concurrency, bool)
            or not isinstance(max_concurrency, int)
            or max_concurrency < 1
        ):
            raise ValueError(
                f"max_concurrency must be a whole number >= 1, not {max_concurrency!r}"
            )
        if max_wait is not None and (
            isinstance(max_wait, bool) or not isinstance(max_wait, (int, float)) or max_wait < 0
        ):
            raise ValueError(f"max_wait must be None or seconds >= 0, not {max_wait!r}")
        if max_workers is not None and (not _is_count(max_workers) or max_workers < 1):
            raise ValueError(
                f"max_workers must be None or a whole number >= 1, not {max_workers!r}"
            )
        if (
            isinstance(arrival_margin, bool)
            or not isinstance(arrival_margin, (int, float))
            or not 0 <= arrival_margin <= 60
        ):
            raise ValueError(
                f"arrival_margin must be seconds between 0 and 60, not {arrival_margin!r}"
            )
        self.arrival_margin = float(arrival_margin)
        rates = normalize_limits(limits)
        policy = RetryPolicy.coerce(retry)
        self.timeout = _check_timeout(timeout)
        self.limits = rates
        self.per_host = bool(per_host)
        self.max_concurrency = max_concurrency
        self.retry = policy
        self.max_wait = max_wait
        self.max_workers = max_concurrency if max_workers is None else max_workers
        self.backend = backend
        self.on_backend_error = on_backend_error
        self.rate_limit_headers = bool(rate_limit_headers)
        if adaptive is True:
            adaptive = Adaptive()
        if adaptive is not None and adaptive is not False and not isinstance(adaptive, Adaptive):
            raise ValueError(
                f"adaptive must be None, a bool or syncfetch.Adaptive, not {adaptive!r}"
            )
        self.adaptive = adaptive or None
        # mount() swaps self.adapters whole, so get_adapter never sees a half-built dict.
        self._mount_lock = threading.Lock()
        super().__init__()
        for prefix in ("https://", "http://"):
            self.mount(prefix, self._default_adapter())
        self._build_pipeline()
        _SESSIONS.add(self)

    def _default_adapter(self) -> HTTPAdapter:
        # pool_block stays False: the slots already cap connections per pool, and a
        # blocking pool would wait for ever (requests passes no pool timeout).
        # A TimedAdapter notes when each request leaves, to date its token by it.
        return TimedAdapter(pool_maxsize=self.max_concurrency, max_retries=0)

    def _build_pipeline(self) -> None:
        self._gated: dict[int, tuple[BaseAdapter, _GatedAdapter]] = {}
        # Twice the workers: enough queued work that no worker idles between calls.
        self._executor = BoundedExecutor(self.max_workers, max_pending=2 * self.max_workers)
        self._pipeline = Pipeline(
            policy=self.retry,
            limiter=make_limiter(
                self.backend,
                self.limits,
                margin=DEFAULT_MARGIN,
                on_backend_error=self.on_backend_error,
                # (getattr: a session pickled before arrival_margin existed)
                arrival=getattr(self, "arrival_margin", DEFAULT_ARRIVAL),
            ),
            slots=Slots(self.max_concurrency),
            per_host=self.per_host,
            max_wait=self.max_wait,
            stats=StatsRecorder(),
            rate_limit_headers=self.rate_limit_headers,
            adaptive=(
                AdaptiveLimiter(self.adaptive, ceiling=_ceiling(self.limits))
                if self.adaptive is not None
                else None
            ),
        )

    def submit(self, method: str, url: str, **kwargs: Any) -> Future[Response]:
        """Run ``self.request(method, url, **kwargs)`` on the session's thread pool.

        Blocks while ``2 * max_workers`` calls are already pending, so a loop of
        submits cannot queue without bound.

        :returns: a future of the response; its exception is the call's exception.
        """
        return self._executor.submit(self.request, method, url, **kwargs)

    def map(
        self,
        items: Iterable[str | Request],
        method: str = "GET",
        *,
        ordered: bool = True,
        **kwargs: Any,
    ) -> Iterator[Result]:
        """Fetch every item on the thread pool, yielding one :class:`Result` per item.

        Items are pulled lazily, at most ``2 * max_workers`` ahead of what has been
        yielded (``8 * max_workers`` in order, so one slow item does not stall the
        workers), so a generator over millions of lines runs in constant memory. A
        failed item is a result with ``error`` set; it never stops the batch. Each
        worker takes the next item itself as soon as it is free. When the loop ends
        early (``break``, an exception, Ctrl-C), no more items start. When
        :meth:`close` is called meanwhile, items in flight end (``SessionClosed`` if
        they were waiting) and every item not started yields a result whose error is
        :class:`SessionClosed`, without being sent.

        :param items: URL strings, or :class:`requests.Request` objects for per-item
            method, headers and body.
        :param method: method for URL-string items.
        :param ordered: yield in input order (``True``) or as completed (``False``).
        :param kwargs: request keyword arguments for every item (``timeout``, ``headers``...).
        :returns: an iterator of results, one per item.
        """
        calls = (
            functools.partial(self._run_item, index, item, method, kwargs)
            for index, item in enumerate(items)
        )
        # In order, one item deep in its retries holds back every later result: a wider
        # window of finished results keeps the workers busy meanwhile (measured in the
        # demo: an item failing six times stalled a 2 x workers window for 11 s). The
        # executor's own bound still caps calls in flight at 2 x workers.
        window = self._executor.max_pending * (4 if ordered else 1)
        return self._executor.run_all(calls, ordered, window=window, cut_short=_cut_short)

    def _run_item(
        self, index: int, item: str | Request, method: str, kwargs: dict[str, Any]
    ) -> Result:
        start = time.monotonic()
        # Pool threads run one item at a time, so the item's call is set here and
        # reset after: its attempts (redirect hops included) are counted in it.
        call = self._new_call()
        token = CURRENT_CALL.set(call)
        try:
            if isinstance(item, str):
                resp = self.request(method, item, **kwargs)
            elif isinstance(item, Request):
                url = item.url or ""
                resp = self.request(item.method or method, url, **_merge(item, kwargs))
            else:
                raise TypeError(
                    f"map() items must be URL strings or requests.Request, not {item!r}"
                )
        except Exception as exc:
            return Result(index, item, None, exc, call.attempts, time.monotonic() - start)
        finally:
            CURRENT_CALL.reset(token)
        return Result(index, item, resp, None, call.attempts, time.monotonic() - start)

    def close(self) -> None:
        """Cancel pool work not yet started, end every wait, close connections.

        Calls waiting for a token, a slot, a backoff or a server-requested pause raise
        :class:`SessionClosed` at once; calls on the wire end within their timeouts. The
        session may be used again afterwards, as a requests session may.
        """
        pipeline = self._pipeline
        pipeline.closing.set()
        try:
            self._executor.shutdown()
            pipeline.limiter.close()
            super().close()
        finally:
            pipeline.closing = threading.Event()

    @property
    def stats(self) -> Stats:
        """A snapshot of this session's counters."""
        return self._pipeline.stats.snapshot()

    def request(  # type: ignore[override]
        self,
        method: str | bytes,
        url: str | bytes,
        params: Any = None,
        data: Any = None,
        headers: Any = None,
        cookies: Any = None,
        files: Any = None,
        auth: Any = None,
        timeout: Any = UNSET,
        allow_redirects: bool = True,
        proxies: Any = None,
        hooks: Any = None,
        stream: bool | None = None,
        verify: Any = None,
        cert: Any = None,
        json: Any = None,
    ) -> Response:
        """Like :meth:`requests.Session.request`; a call passing no ``timeout`` gets the session's.

        :returns: the response (after retries, the last one).
        :raises RateLimitExceeded: when ``max_wait`` runs out before a slot or token.
        """
        return super().request(
            method,  # type: ignore[arg-type]
            url,
            params,
            data,
            headers,
            cookies,
            files,
            auth,
            self.timeout if timeout is UNSET else timeout,
            allow_redirects,
            proxies,
            hooks,
            stream,
            verify,
            cert,
            json,
        )

    def send(self, request: PreparedRequest, **kwargs: Any) -> Response:
        """Like :meth:`requests.Session.send`, through the rate limit, slots and retries.

        :returns: the response; ``elapsed`` is the last attempt's time on the wire.
        """
        kwargs.setdefault("timeout", self.timeout)
        call = CURRENT_CALL.get()
        if call is not None and call.owner is self:
            resp = super().send(request, **kwargs)  # a redirect hop of the current call
        else:
            token = CURRENT_CALL.set(self._new_call())
            try:
                resp = super().send(request, **kwargs)
            finally:
                CURRENT_CALL.reset(token)
        wire = getattr(resp, "_syncfetch_wire_time", None)
        if wire is not None:
            resp.elapsed = timedelta(seconds=wire)
        return resp

    def _new_call(self) -> Call:
        deadline = self.retry.deadline
        return Call(self, None if deadline is None else time.monotonic() + deadline)

    def get_adapter(self, url: str) -> BaseAdapter:
        """Like :meth:`requests.Session.get_adapter`; inside a call, the adapter is gated."""
        adapter = super().get_adapter(url)
        call = CURRENT_CALL.get()
        if call is not None and call.owner is self:
            # One gate per mounted adapter, made once: this runs on every call.
            entry = self._gated.get(id(adapter))
            if entry is None or entry[0] is not adapter:
                entry = self._gated[id(adapter)] = (adapter, _GatedAdapter(self._pipeline, adapter))
            return entry[1]
        return adapter

    def mount(self, prefix: str, adapter: BaseAdapter) -> None:
        """Like :meth:`requests.Session.mount`, and safe while other threads send.

        An adapter with urllib3 retries would retry behind the limiter's back, so
        that draws a warning: use ``retry=`` instead.
        """
        retries = getattr(adapter, "max_retries", None)
        if retries is not None and _counts_retries(retries):
            warnings.warn(
                f"adapter for {prefix!r} has urllib3 retries ({retries!r}); they bypass the "
                "rate limit. Pass retry=... to syncfetch.Session instead.",
                UserWarning,
                stacklevel=2,
            )
        with self._mount_lock:
            adapters: OrderedDict[str, BaseAdapter] = OrderedDict(self.adapters)
            adapters[prefix] = adapter
            # Longest prefixes first, as requests orders them.
            for key in [k for k in adapters if len(k) < len(prefix)]:
                adapters[key] = adapters.pop(key)
            self.adapters = adapters

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        super().__setstate__(dict(state))
        self._mount_lock = threading.Lock()
        self._build_pipeline()
        _SESSIONS.add(self)

    def _after_fork(self) -> None:
        """In a forked child: new locks, and connection pools not shared with the parent."""
        self._mount_lock = threading.Lock()
        self._executor.after_fork()
        # A parent thread may have held the cookie jar's lock at fork time.
        self.cookies._cookies_lock = threading.RLock()  # type: ignore[attr-defined]
        self._pipeline.after_fork()
        for adapter in self.adapters.values():
            if isinstance(adapter, HTTPAdapter):
                # Dropping (not closing) the parent's pools: closing a TLS socket could
                # disturb the parent's use of the same connection.
                adapter.init_poolmanager(
                    adapter._pool_connections,
                    adapter._pool_maxsize,
                    block=adapter._pool_block,
                )
                adapter.proxy_manager = {}


def _cut_short(call: Callable[[], Result]) -> Result:
    """The result of a ``map`` item that ``close()`` kept from starting."""
    assert isinstance(call, functools.partial)
    index, item = call.args[0], call.args[1]
    error = SessionClosed("the session was closed before this item started")
    return Result(index, item, None, error, 0, 0.0)


def _merge(item: Request, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for one Request item: its own fields win over the batch's."""
    merged = dict(kwargs)
    # Request() turns absent params, data and files into empty containers, but keeps
    # json and auth as None, so json=[] or json=0 still counts as given.
    for name in ("params", "data", "cookies", "files"):
        value = getattr(item, name)
        if value:
            merged[name] = value
    for name in ("auth", "json"):
        value = getattr(item, name)
        if value is not None:
            merged[name] = value
    if item.headers:
        merged["headers"] = {**(kwargs.get("headers") or {}), **item.headers}
    if any(item.hooks.values()):
        merged["hooks"] = item.hooks
    return merged


def _ceiling(rates: list[Rate]) -> float | None:
    """The highest steady rate (requests/second) the configured limits allow."""
    return min((r.limit * 1000 / r.interval for r in rates), default=None)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _counts_retries(retries: Any) -> bool:
    total = getattr(retries, "total", 0)
    if total is None:
        return any(getattr(retries, name, 0) for name in ("connect", "read", "status", "other"))
    return bool(total) and total is not False


_SESSIONS: weakref.WeakSet[Session] = weakref.WeakSet()


def _reinit_after_fork() -> None:
    for session in list(_SESSIONS):
        session._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_after_fork)


def _end_waits_at_exit() -> None:
    # The interpreter joins pool threads before atexit handlers run: end their waits
    # first, so exit never sits through a token, backoff or pause wait.
    for session in list(_SESSIONS):
        session._pipeline.closing.set()
        session._executor.stop_runs()  # map runners waiting for the consumer end


# threading._register_atexit is what concurrent.futures itself uses to stop its pools
# before the joins; registered after it, ours runs first.
_register_atexit = getattr(threading, "_register_atexit", None)
if _register_atexit is not None:
    _register_atexit(_end_waits_at_exit)

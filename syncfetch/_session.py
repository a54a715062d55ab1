"""``syncfetch.Session``: a ``requests.Session`` whose every attempt goes through the pipeline."""

from __future__ import annotations

import contextvars
import functools
import math
import os
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from concurrent.futures import Future
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeVar, cast

import requests
from pyrate_limiter import Rate
from requests import PreparedRequest, Request, Response
from requests.adapters import BaseAdapter, HTTPAdapter
from urllib3.util import Timeout as Urllib3Timeout

from ._adaptive import Adaptive, AdaptiveLimiter
from ._events import EventHook, hooks_of
from ._exceptions import SessionClosed
from ._executor import BoundedExecutor
from ._options import UNSET, check_max_wait, check_overrides, resolve
from ._pipeline import CURRENT_CALL, Call, Pipeline, _timeout_pair, bucket_key
from ._progress import track
from ._rates import LimitsArg, normalize_limits
from ._result import Result
from ._retry import RetryPolicy
from ._routes import RouteTable
from ._slots import Slots
from ._stats import Stats, StatsRecorder
from ._stores import (
    BACKEND_FORMS,
    CLUSTER_PREFIXES,
    ON_BACKEND_ERROR,
    SENTINEL_PREFIXES,
    make_limiter,
)
from ._stores.base import DEFAULT_ARRIVAL, Limiter
from ._stores.memory import KeyedLimiter
from ._wire import TimedAdapter

if TYPE_CHECKING:
    from redis import Redis


DEFAULT_TIMEOUT = (3.05, 30.0)
# Covers millisecond rounding of the shared backends' token times; the delay between a
# token and the server counting its request is covered by dating it at the send
# (KeyedLimiter.settle).
DEFAULT_MARGIN = 0.002


#: Seconds, a ``(connect, read)`` pair (either may be None), or None for no timeout.
TimeoutArg: TypeAlias = "float | tuple[float | None, float | None] | None"
#: ``"memory"``, ``"sqlite:///path"``, ``"redis://..."``, or a ``redis.Redis`` client.
StoreArg: TypeAlias = "str | Redis"


def _is_seconds(value: Any) -> bool:
    """A finite number of seconds (bools are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_timeout(timeout: Any) -> Any:
    if timeout is None:
        return None
    values = timeout if isinstance(timeout, tuple) else (timeout,)
    if len(values) not in (1, 2) or any(
        v is not None and (not _is_seconds(v) or v <= 0) for v in values
    ):
        raise ValueError(
            "timeout must be None, finite seconds > 0, or a (connect, read) tuple of them, "
            f"not {timeout!r}"
        )
    return timeout


def _check_call_timeout(timeout: Any) -> None:
    """A call's own ``timeout``, refused before any token is taken, as requests refuses it.

    :raises ValueError: requests' own message, naming the value.
    """
    if not isinstance(timeout, Urllib3Timeout):
        _timeout_pair(timeout)


def _check_limits(limits: Any) -> list[Rate] | RouteTable:
    if isinstance(limits, RouteTable):
        return limits
    if isinstance(limits, Mapping):
        return RouteTable(limits)
    if limits is not None and not isinstance(limits, (str, Rate, Iterable)):
        raise TypeError(
            'limits must be None, a rate such as "10/second", a pyrate_limiter.Rate, a list '
            f"of them, or a mapping of route patterns to them, not {limits!r}"
        )
    return normalize_limits(limits)


def _check_flag(name: str) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, not {value!r}")
        return value

    return check


def _check_max_concurrency(value: Any) -> int:
    if not _is_count(value) or value < 1:
        raise ValueError(f"max_concurrency must be a whole number >= 1, not {value!r}")
    return int(value)


def _check_arrival_margin(value: Any) -> float:
    if not _is_seconds(value) or not 0 <= value <= 60:
        raise ValueError(f"arrival_margin must be seconds between 0 and 60, not {value!r}")
    return float(value)


def _check_max_workers(value: Any) -> int | None:
    if value is not None and (not _is_count(value) or value < 1):
        raise ValueError(f"max_workers must be None or a whole number >= 1, not {value!r}")
    return None if value is None else int(value)


STORE_PREFIXES = (
    "sqlite:///",
    "redis://",
    "rediss://",
    "unix://",
    *CLUSTER_PREFIXES,
    *SENTINEL_PREFIXES,
)


def _check_store(store: Any) -> Any:
    """Catch what can be caught without connecting: an unknown form, an SQLite file that
    cannot be created."""
    if not (
        store is None
        or store == "memory"
        or (isinstance(store, str) and store.startswith(STORE_PREFIXES))
        or type(store).__module__.startswith("redis")
    ):
        raise ValueError(f"unknown store {store!r}: expected {BACKEND_FORMS}")
    if isinstance(store, str) and store.startswith("sqlite:///"):
        path = store[len("sqlite:///") :]
        folder = os.path.dirname(os.path.abspath(path))
        if not path or path == ":memory:" or os.path.isdir(path):
            raise ValueError(f"store {store!r} must name a database file")
        if not os.path.isdir(folder):
            raise ValueError(
                f"store {store!r}: the directory {folder!r} does not exist (it is not "
                "created for you; four slashes start an absolute path)"
            )
        if not os.access(path if os.path.exists(path) else folder, os.R_OK | os.W_OK):
            raise ValueError(f"store {store!r}: {path!r} is not writable by this process")
    return store


def _check_on_backend_error(value: Any) -> str:
    if value not in ON_BACKEND_ERROR:
        raise ValueError(f"on_backend_error must be one of {ON_BACKEND_ERROR}, not {value!r}")
    return str(value)


def _check_adaptive(value: Any) -> Adaptive | None:
    if value is True:
        return Adaptive()
    if value is None or value is False:
        return None
    if not isinstance(value, Adaptive):
        raise ValueError(f"adaptive must be None, a bool or syncfetch.Adaptive, not {value!r}")
    return value


#: One check per Session argument, shared by ``__init__`` and attribute assignment:
#: each returns the value to store or raises ValueError/TypeError naming the value.
_CHECKS: dict[str, Callable[[Any], Any]] = {
    "limits": _check_limits,
    "per_host": _check_flag("per_host"),
    "max_concurrency": _check_max_concurrency,
    "retry": RetryPolicy.coerce,
    "timeout": _check_timeout,
    "max_wait": check_max_wait,
    "max_workers": _check_max_workers,
    "store": _check_store,
    "on_backend_error": _check_on_backend_error,
    "rate_limit_headers": _check_flag("rate_limit_headers"),
    "adaptive": _check_adaptive,
    "arrival_margin": _check_arrival_margin,
}


def check_arguments(kwargs: Mapping[str, Any]) -> None:
    """Check :class:`Session` keyword arguments as the constructor would, building nothing.

    :raises ValueError: naming an unknown argument or a bad value.
    :raises TypeError: for a value of the wrong type, naming it.
    """
    for name, value in kwargs.items():
        check = _CHECKS.get(name)
        if check is None:
            raise ValueError(f"syncfetch.Session has no argument {name!r}")
        check(value)


# Assigning retry, max_wait, rate_limit_headers or adaptive replaces only the pipeline
# (the limiter's windows and pauses, the slots, the pool and the stats carry over), and
# timeout nothing at all: safe while other threads send.
# Settings that change the limiter: in memory it is changed in place (its windows and
# pauses stay); a shared backend's new limiter finds them in the backend.
_LIMITER_SETTINGS = frozenset({"limits", "on_backend_error", "arrival_margin"})
# Settings that define what the session is built on (the bucket keys, the store, the
# connection pools, the thread pool): assignable only before the first call.
_FIXED_SETTINGS = frozenset({"per_host", "store", "max_concurrency", "max_workers"})


#: Arguments renamed before 1.0, and what to pass instead.
RENAMED = {"backend": "store"}

_F = TypeVar("_F", bound=Callable[..., None])


def _refusing_renamed(init: _F) -> _F:
    """``init``, refusing a renamed argument with a TypeError that names its new name.

    The signature stays ``init``'s (``functools.wraps``): type checkers, ``inspect`` (the
    settings' key check) and requests-cache's ``CacheMixin`` see no extra parameter.
    """

    @functools.wraps(init)
    def checked(self: Any, *args: Any, **kwargs: Any) -> None:
        for old, new in RENAMED.items():
            if old in kwargs:
                raise TypeError(
                    f"syncfetch.Session got {old}={_store_text(kwargs[old])}: the argument is "
                    f"now called {new}= ({old}= clashed with requests-cache's CacheMixin)"
                )
        init(self, *args, **kwargs)

    return cast(_F, checked)


#: ``(session, checked per-call options, whether the call passed a timeout)`` while
#: ``Session.request`` runs, for the ``send`` that starts the call (the session is
#: checked: a hook may call another).
_OVERRIDES: contextvars.ContextVar[tuple[Session, dict[str, Any], bool] | None] = (
    contextvars.ContextVar("syncfetch_overrides", default=None)
)


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

    :param limits: ``"10/second"``, a :class:`pyrate_limiter.Rate`, or a list of them
        (the same limits for every host); ``None`` for no rate limit. Rates that another
        rate already implies are dropped. Or a mapping of route patterns to limits (or
        :class:`Route` values), ``{"*": "10/second", "https://api.github.com/search/":
        "30/minute"}``: a call pays its origin's route and every more specific one, all
        or nothing (see the limits page), in every store.
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
    :param store: where the limits' buckets live: ``"memory"`` (this process),
        ``"sqlite:///path.db"`` (processes of one machine), ``"redis://host:port/db"``
        or a ``redis.Redis`` client (many machines). Formerly ``backend=``, a name that
        requests-cache's ``CacheMixin`` takes for itself: passing it raises TypeError.
    :param on_backend_error: ``"raise"`` to fail calls with :class:`BackendUnavailable`
        while a shared backend is unreachable, ``"fallback"`` to limit per process meanwhile.
    :param rate_limit_headers: pause a bucket key when a response's ``RateLimit`` or
        ``X-RateLimit-*`` headers report its quota spent, until the reset they give.
    :param adaptive: ``True`` or an :class:`Adaptive` to let each key's rate follow the
        server's throttling (the limits become a ceiling); ``None``/``False`` for off.
    :param on_event: a callable, or a list of them, handed an :class:`Event` for each
        attempt, response, retry, give-up, pause and wait (see :meth:`add_event_hook`).
    :param arrival_margin: seconds after a request leaves this process by which the
        server is assumed to have counted it (its own stamping delay); each token is
        dated that long after its request's send (later by any time its answer took
        beyond the host's usual), and never later than its answer.
    :raises ValueError: for an invalid argument, naming it (also a ``sqlite:///`` path
        whose directory does not exist).
    :raises TypeError: for an argument of the wrong type, naming it.

    Each argument is also an attribute. Assigning one is checked the same way and takes
    effect at once, while other threads send, except ``per_host``, ``store``,
    ``max_concurrency`` and ``max_workers``, which can change only before the first call.
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
        "store",
        "on_backend_error",
        "rate_limit_headers",
        "adaptive",
        "arrival_margin",
    ]

    # The settings, as checked and stored (assigning one goes through __setattr__).
    limits: list[Rate] | RouteTable
    per_host: bool
    max_concurrency: int
    retry: RetryPolicy
    timeout: TimeoutArg
    max_wait: float | None
    max_workers: int
    store: StoreArg
    on_backend_error: str
    rate_limit_headers: bool
    adaptive: Adaptive | None
    arrival_margin: float

    @_refusing_renamed
    def __init__(
        self,
        limits: LimitsArg = None,
        *,
        per_host: bool = True,
        max_concurrency: int = 10,
        retry: RetryPolicy | int | None = RetryPolicy(),  # noqa: B008 - immutable value
        timeout: TimeoutArg = DEFAULT_TIMEOUT,
        max_wait: float | None = None,
        max_workers: int | None = None,
        store: StoreArg = "memory",
        on_backend_error: Literal["raise", "fallback"] = "raise",
        rate_limit_headers: bool = True,
        adaptive: Adaptive | bool | None = None,
        on_event: EventHook | Iterable[EventHook] | None = None,
        arrival_margin: float = DEFAULT_ARRIVAL,
    ) -> None:
        hooks = hooks_of(on_event)
        given = {
            "limits": limits,
            "per_host": per_host,
            "max_concurrency": max_concurrency,
            "retry": retry,
            "timeout": timeout,
            "max_wait": max_wait,
            "max_workers": max_workers,
            "store": store,
            "on_backend_error": on_backend_error,
            "rate_limit_headers": rate_limit_headers,
            "adaptive": adaptive,
            "arrival_margin": arrival_margin,
        }
        values = {name: _CHECKS[name](value) for name, value in given.items()}
        self._workers_given = values["max_workers"] is not None
        if not self._workers_given:
            values["max_workers"] = values["max_concurrency"]
        self.__dict__.update(values)
        # Set by the first send: per_host, store and the pools are fixed from then on.
        self._sent = False
        # mount() swaps self.adapters whole, so get_adapter never sees a half-built dict.
        self._mount_lock = threading.Lock()
        # Serializes assignments of the settings above (see __setattr__).
        self._config_lock = threading.Lock()
        super().__init__()
        for prefix in ("https://", "http://"):
            self.mount(prefix, self._default_adapter())
        self._build_pipeline()
        for hook in hooks:
            self.add_event_hook(hook)
        _SESSIONS.add(self)

    def __setattr__(self, name: str, value: Any) -> None:
        """Assigning a setting checks it as the constructor does, then applies it.

        ``timeout``, ``max_wait``, ``retry``, ``rate_limit_headers``, ``adaptive``,
        ``limits`` and ``on_backend_error`` take effect at once, also while other threads
        send (calls in flight finish under the old settings). ``per_host``, ``store``,
        ``max_concurrency`` and ``max_workers`` can be assigned only before the first
        call. Every other attribute behaves as in requests.
        """
        if name in RENAMED:
            raise AttributeError(f"{name} is now called {RENAMED[name]}: assign that instead")
        check = _CHECKS.get(name)
        if check is None or "_pipeline" not in self.__dict__:
            # requests' own attributes, or the settings while __init__/__setstate__ run.
            super().__setattr__(name, value)
            return
        with self._config_lock:
            if name in _FIXED_SETTINGS and self._sent:
                raise AttributeError(
                    f"{name} cannot change once the session has sent requests (it decides "
                    "the bucket keys, the store or the pools its calls share): create a new "
                    f"syncfetch.Session({name}=...) instead"
                )
            checked = check(value)
            if name == "max_workers":
                self._workers_given = checked is not None
                if checked is None:
                    checked = self.max_concurrency
            old = self.__dict__[name]
            self.__dict__[name] = checked
            try:
                if name == "max_concurrency" and not self._workers_given:
                    self.__dict__["max_workers"] = checked
                if name != "timeout":  # read by every call: nothing to rebuild
                    self._rebuild(name)
            except BaseException:
                self.__dict__[name] = old
                raise

    def __delattr__(self, name: str) -> None:
        if name in _CHECKS:
            raise AttributeError(f"{name} is a setting of the session: assign a value instead")
        super().__delattr__(name)

    def __repr__(self) -> str:
        limits = self.limits
        shown = (
            limits.mapping if isinstance(limits, RouteTable) else [_rate_text(r) for r in limits]
        )
        parts = [
            f"limits={shown!r}",
            f"per_host={self.per_host!r}",
            f"max_concurrency={self.max_concurrency!r}",
            f"retry={self.retry!r}",
            f"timeout={self.timeout!r}",
            f"max_wait={self.max_wait!r}",
            f"max_workers={self.max_workers!r}",
            f"store={_store_text(self.store)}",
        ]
        if self.on_backend_error != "raise":
            parts.append(f"on_backend_error={self.on_backend_error!r}")
        if not self.rate_limit_headers:
            parts.append("rate_limit_headers=False")
        if self.adaptive is not None:
            parts.append(f"adaptive={self.adaptive!r}")
        return f"<syncfetch.Session {' '.join(parts)}>"

    def add_event_hook(self, hook: EventHook) -> None:
        """Call ``hook(event)`` for every :class:`Event` of this session, from now on.

        Hooks run on the thread where the event happens, so they should be quick; one
        that raises is logged once and never breaks a call. Hooks are not pickled.

        :raises TypeError: when ``hook`` is not callable.
        """
        if not callable(hook):
            raise TypeError(f"hook must be callable, not {hook!r}")
        self._pipeline.hub.add(hook)
        self._pipeline.set_hooks()

    def remove_event_hook(self, hook: EventHook) -> None:
        """Stop calling ``hook``.

        :raises ValueError: when it was not added.
        """
        self._pipeline.hub.remove(hook)
        self._pipeline.set_hooks()

    def _default_adapter(self) -> HTTPAdapter:
        # pool_block stays False: the slots already cap connections per pool, and a
        # blocking pool would wait for ever (requests passes no pool timeout).
        # A TimedAdapter notes when each request leaves, to date its token by it.
        return TimedAdapter(pool_maxsize=self.max_concurrency, max_retries=0)

    def _make_limiter(self) -> Limiter:
        return make_limiter(
            self.store,
            [] if isinstance(self.limits, RouteTable) else self.limits,
            margin=DEFAULT_MARGIN,
            on_backend_error=self.on_backend_error,
            # (getattr: a session pickled before arrival_margin existed)
            arrival=getattr(self, "arrival_margin", DEFAULT_ARRIVAL),
        )

    def _make_pipeline(
        self, limiter: Limiter, slots: Slots, stats: StatsRecorder, adaptive: AdaptiveLimiter | None
    ) -> Pipeline:
        return Pipeline(
            policy=self.retry,
            limiter=limiter,
            slots=slots,
            per_host=self.per_host,
            max_wait=self.max_wait,
            stats=stats,
            rate_limit_headers=self.rate_limit_headers,
            adaptive=adaptive,
            routes=self.limits if isinstance(self.limits, RouteTable) else None,
            windows=_windows(self.limits),
        )

    def _make_adaptive(self) -> AdaptiveLimiter | None:
        if self.adaptive is None:
            return None
        limits = self.limits
        # With routes, no one ceiling: each route's own limits still bind.
        ceiling = None if isinstance(limits, RouteTable) else _ceiling(limits)
        return AdaptiveLimiter(self.adaptive, ceiling=ceiling)

    def _build_pipeline(self) -> None:
        self._gated: dict[int, tuple[BaseAdapter, _GatedAdapter]] = {}
        # Twice the workers: enough queued work that no worker idles between calls.
        self._executor = BoundedExecutor(self.max_workers, max_pending=2 * self.max_workers)
        self._pipeline = self._make_pipeline(
            self._make_limiter(),
            Slots(self.max_concurrency),
            StatsRecorder(),
            self._make_adaptive(),
        )

    def _rebuild(self, changed: str) -> None:
        """Apply an assigned setting (under ``_config_lock``): a new pipeline is swapped in.

        Calls in flight keep the pipeline they started on; the closing event is shared,
        so close() still ends their waits. Whatever the setting does not concern (limiter,
        slots, stats, budget, adaptive state) is carried over.
        """
        old = self._pipeline
        if changed in _FIXED_SETTINGS:  # nothing sent yet: build afresh, keep the stats
            new_limiter = self._make_limiter()
            old.limiter.close()
            self._executor.shutdown()
            self._executor = BoundedExecutor(self.max_workers, max_pending=2 * self.max_workers)
            if changed == "max_concurrency":
                for adapter in self.adapters.values():
                    if isinstance(adapter, HTTPAdapter) and adapter._pool_maxsize == old.slots.size:
                        adapter.init_poolmanager(
                            adapter._pool_connections, self.max_concurrency, adapter._pool_block
                        )
                        adapter._pool_maxsize = self.max_concurrency
            new = self._make_pipeline(
                new_limiter, Slots(self.max_concurrency), old.stats, self._make_adaptive()
            )
        else:
            limiter = old.limiter
            if isinstance(limiter, KeyedLimiter):
                # In memory: changed in place, so no token is taken outside the new
                # rates, even by calls that started on the old pipeline.
                if changed == "limits":
                    rates = [] if isinstance(self.limits, RouteTable) else self.limits
                    limiter.set_rates(rates, margin=DEFAULT_MARGIN)
                elif changed == "arrival_margin":
                    limiter.arrival = self.arrival_margin
            elif changed in _LIMITER_SETTINGS:
                # A shared backend keeps the windows and pauses: a new limiter reads them.
                limiter = self._make_limiter()
            adaptive = old.adaptive
            if changed in ("adaptive", "limits"):
                adaptive = self._make_adaptive()
            new = self._make_pipeline(limiter, old.slots, old.stats, adaptive)
            if new.budget is not None and old.policy.budget == new.policy.budget:
                new.budget = old.budget
            if limiter is not old.limiter:
                # Calls in flight still wait on and settle tokens with the old limiter:
                # close it once the last of them drops the old pipeline. Its sleep must
                # not keep that pipeline alive (a cycle would delay the close to a GC).
                old.limiter.sleep = _weak_sleep(old)
                weakref.finalize(old, old.limiter.close)
        new.closing = old.closing
        new.hub = old.hub  # event hooks stay with the session
        new.set_hooks()
        self._gated = {}
        self._pipeline = new

    def submit(self, method: str, url: str, **kwargs: Any) -> Future[Response]:
        """Run ``self.request(method, url, **kwargs)`` on the session's thread pool.

        Blocks while ``2 * max_workers`` calls are already pending, so a loop of
        submits cannot queue without bound.

        :param kwargs: :meth:`request`'s keyword arguments, per-call ``retry`` and
            ``max_wait`` included (checked here, before anything is queued).
        :returns: a future of the response; its exception is the call's exception.
        :raises ValueError: or TypeError, for a bad per-call ``retry``, ``max_wait`` or
            ``timeout``, naming it.
        """
        check_overrides(kwargs)
        if kwargs.get("timeout", UNSET) is not UNSET:
            _check_call_timeout(kwargs["timeout"])
        return self._executor.submit(self.request, method, url, **kwargs)

    def map(
        self,
        items: Iterable[str | Request],
        method: str = "GET",
        *,
        ordered: bool = True,
        progress: bool = False,
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
        :param progress: draw progress on stderr while it is a terminal (done, rate,
            ETA when ``items`` has a length, failures, retries, 429s): tqdm's bar when
            tqdm is installed, else the line ``syncfetch fetch`` draws.
        :param kwargs: request keyword arguments for every item (``timeout``, ``headers``,
            per-call ``retry`` and ``max_wait``...).
        :returns: an iterator of results, one per item.
        :raises ValueError: or TypeError, for a bad per-call ``retry``, ``max_wait`` or
            ``timeout``, naming it (before any item starts).
        """
        overrides = check_overrides(kwargs)
        kwargs = {name: value for name, value in kwargs.items() if name not in overrides}
        if kwargs.get("timeout", UNSET) is not UNSET:
            _check_call_timeout(kwargs["timeout"])
        calls: Iterator[Callable[[], Result]] = (
            functools.partial(self._run_item, index, item, method, kwargs, overrides)
            for index, item in enumerate(items)
        )
        if self._pipeline.events is not None:
            # Watched: each item runs in a copy of the caller's context, so that a trace
            # span current around map() is the parent of the items' spans.
            context = contextvars.copy_context()
            calls = (functools.partial(context.copy().run, call) for call in calls)
        # In order, one item deep in its retries holds back every later result: a wider
        # window of finished results keeps the workers busy meanwhile (measured in the
        # demo: an item failing six times stalled a 2 x workers window for 11 s). The
        # executor's own bound still caps calls in flight at 2 x workers.
        window = self._executor.max_pending * (4 if ordered else 1)
        results = self._executor.run_all(calls, ordered, window=window, cut_short=_cut_short)
        if progress:
            total = len(items) if isinstance(items, Sized) else None
            return track(results, self, total)
        return results

    def _run_item(
        self,
        index: int,
        item: str | Request,
        method: str,
        kwargs: dict[str, Any],
        overrides: dict[str, Any] | None = None,
    ) -> Result:
        start = time.monotonic()
        # Pool threads run one item at a time, so the item's call is set here and
        # reset after: its attempts (redirect hops included) are counted in it.
        call = self._new_call(overrides, kwargs.get("timeout", UNSET) is not UNSET)
        token = CURRENT_CALL.set(call)
        used = getattr(item, "method", None) or method
        used = used.upper() if isinstance(used, str) else None  # as requests sends it
        events = self._pipeline.events
        if events is not None:
            key = bucket_key(_item_url(item), self.per_host)
            events.call_start(call, used, _item_url(item), key)
        result: Result | None = None
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
            result = Result(index, item, None, exc, call.attempts, time.monotonic() - start, used)
        else:
            result = Result(index, item, resp, None, call.attempts, time.monotonic() - start, used)
        finally:
            CURRENT_CALL.reset(token)
            if events is not None:
                events.call_end(call, used, _item_url(item), key, start, result)
        return result

    def close(self) -> None:
        """Cancel pool work not yet started, end every wait, close connections.

        Calls waiting for a token, a slot, a backoff or a server-requested pause raise
        :class:`SessionClosed` at once; calls on the wire end within their timeouts. The
        session may be used again afterwards, as a requests session may.
        """
        pipeline = self._pipeline
        pipeline.end_waits()
        try:
            self._executor.shutdown()
            pipeline.limiter.close()
            super().close()
        finally:
            pipeline.closing = threading.Event()

    @property
    def stats(self) -> Stats:
        """A snapshot of this session's counters: the totals, and per key in ``by_key``."""
        pipeline = self._pipeline
        adaptive = pipeline.adaptive
        return pipeline.stats.snapshot(
            pipeline.limiter.paused_for, adaptive.rate if adaptive is not None else None
        )

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
        *,
        retry: RetryPolicy | int | None = UNSET,
        max_wait: float | None = UNSET,
        cost: int = UNSET,
        priority: int = UNSET,
    ) -> Response:
        """Like :meth:`requests.Session.request`; a call passing no ``timeout`` gets the session's.

        ``retry``, ``max_wait`` and ``timeout`` given here apply to this call alone (its
        redirect hops and retries included), in the forms the session takes them.

        :param cost: tokens each attempt of this call takes (GraphQL points, weights):
            a whole number >= 0, 1 when not given; 0 takes none. Routes with a cost of
            their own charge that instead (:class:`Route`).
        :param priority: a whole number, 0 by default: the calls waiting for a bucket
            form a line, by priority and then arrival, and a call takes from a bucket
            only when it has room for the costs of the calls ahead of it too; a waiting
            call's priority rises by one every 10 s (``AGING``), so none starves.
            Across processes with the shared stores for calls with routes or a cost
            (see the limits page).

        :returns: the response (after retries, the last one).
        :raises RateLimitExceeded: when ``max_wait`` runs out before a slot or token.
        :raises ValueError: or TypeError, for a bad ``retry``, ``max_wait``,
            ``timeout``, ``cost`` or ``priority``, naming it, before anything is sent;
            for a ``cost`` larger than a limit it would pay (no window could hold it).
        """
        given: dict[str, Any] = {}
        if retry is not UNSET:
            given["retry"] = retry
        if max_wait is not UNSET:
            given["max_wait"] = max_wait
        if cost is not UNSET:
            given["cost"] = cost
        if priority is not UNSET:
            given["priority"] = priority
        overrides = check_overrides(given)
        if timeout is not UNSET:
            _check_call_timeout(timeout)
        # Read by send() when it starts the call (requests passes send() no extra keywords).
        token = _OVERRIDES.set((self, overrides, timeout is not UNSET))
        try:
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
        finally:
            _OVERRIDES.reset(token)

    def send(self, request: PreparedRequest, **kwargs: Any) -> Response:
        """Like :meth:`requests.Session.send`, through the rate limit, slots and retries.

        :returns: the response; ``elapsed`` is the last attempt's time on the wire.
        """
        timeout_given = "timeout" in kwargs  # by a direct send(); request() says below
        kwargs.setdefault("timeout", self.timeout)
        if not self._sent:
            self._sent = True
        call = CURRENT_CALL.get()
        if call is not None and call.owner is self:
            resp = super().send(request, **kwargs)  # a redirect hop of the current call
        else:
            given = _OVERRIDES.get()
            if given is not None and given[0] is self:
                call = self._new_call(given[1], given[2])
            else:
                call = self._new_call(None, timeout_given)
            token = CURRENT_CALL.set(call)
            try:
                if self._pipeline.events is None:
                    resp = super().send(request, **kwargs)
                else:
                    resp = self._observed_send(call, request, kwargs)
            finally:
                CURRENT_CALL.reset(token)
        wire = getattr(resp, "_syncfetch_wire_time", None)
        if wire is not None:
            resp.elapsed = timedelta(seconds=wire)
        return resp

    def _observed_send(
        self, call: Call, request: PreparedRequest, kwargs: dict[str, Any]
    ) -> Response:
        """``send`` of a new call, between its ``call_start`` and ``call_end`` events."""
        hub = self._pipeline.hub
        key = bucket_key(request.url, self.per_host)
        start = time.monotonic()
        hub.call_start(call, request.method, request.url, key)
        outcome: Response | BaseException | None = None
        try:
            resp = outcome = super().send(request, **kwargs)
        except BaseException as exc:
            outcome = exc
            raise
        finally:
            hub.call_end(call, request.method, request.url, key, start, outcome)
        return resp

    def _new_call(self, overrides: Mapping[str, Any] | None = None, timeout: bool = False) -> Call:
        """A call under the session's settings, with the call's own ``overrides``.

        :param timeout: whether the call passed its own ``timeout``.
        """
        options = resolve(self._pipeline.options, overrides, timeout)
        deadline = options.retry.deadline
        now = time.monotonic()
        return Call(
            self,
            None if deadline is None else now + deadline,
            started=now,
            options=options,
            cost=options.cost,
            priority=options.priority,
        )

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
        state = dict(state)
        for old, new in RENAMED.items():  # pickled before the rename
            if old in state:
                state[new] = state.pop(old)
        super().__setstate__(state)
        self._mount_lock = threading.Lock()
        self._config_lock = threading.Lock()
        self._workers_given = self.max_workers != self.max_concurrency
        self._sent = False
        self._build_pipeline()
        _SESSIONS.add(self)

    def _after_fork(self) -> None:
        """In a forked child: new locks, and connection pools not shared with the parent."""
        self._mount_lock = threading.Lock()
        self._config_lock = threading.Lock()
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


def _weak_sleep(pipeline: Pipeline) -> Callable[[float], None]:
    """``pipeline``'s closable sleep, holding it weakly."""
    ref = weakref.ref(pipeline)

    def sleep(seconds: float) -> None:
        target = ref()
        if target is None:  # cannot happen while a call on it waits: its frame holds it
            raise SessionClosed("the session's old settings are gone")
        target._sleep(seconds)

    return sleep


def _rate_text(rate: Rate) -> str:
    """``10/1s``, ``500/60s``: a rate as the limits argument could spell it."""
    return f"{rate.limit}/{rate.interval / 1000:g}s"


def _store_text(store: Any) -> str:
    """The store for a repr, with any password (user-info or query) masked."""
    if not isinstance(store, str):
        return f"<{type(store).__module__}.{type(store).__qualname__}>"
    scheme, sep, rest = store.partition("://")
    if not sep or scheme == "sqlite":
        return repr(store)
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{host}" if ":" in user else f"***@{host}"
    path, qmark, query = path.partition("?")
    if qmark:
        query = "&".join(f"{part.partition('=')[0]}=***" for part in query.split("&"))
    return repr(f"{scheme}://{netloc}{slash}{path}{qmark}{query}")


def _item_url(item: object) -> str | None:
    url = item if isinstance(item, str) else getattr(item, "url", None)
    return url if isinstance(url, str) else None


def _cut_short(call: Callable[[], Result]) -> Result:
    """The result of a ``map`` item that ``close()`` kept from starting."""
    assert isinstance(call, functools.partial)
    index, item = call.args[0], call.args[1]
    error = SessionClosed("the session was closed before this item started")
    method = item.method if isinstance(item, Request) and item.method else call.args[2]
    return Result(index, item, None, error, 0, 0.0, method)


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


def _windows(limits: list[Rate] | RouteTable) -> tuple[tuple[int, int], ...]:
    """The session-wide rates as ``(limit, ms)`` (none with routes: each has its own)."""
    if isinstance(limits, RouteTable):
        return ()
    return tuple((r.limit, r.interval) for r in limits)


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
        session._pipeline.end_waits()
        session._executor.stop_runs()  # map runners waiting for the consumer end


# threading._register_atexit is what concurrent.futures itself uses to stop its pools
# before the joins; registered after it, ours runs first.
_register_atexit = getattr(threading, "_register_atexit", None)
if _register_atexit is not None:
    _register_atexit(_end_waits_at_exit)

"""The bounded thread pool behind ``Session.submit`` and ``Session.map``."""

from __future__ import annotations

import collections
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from ._slots import Permits

T = TypeVar("T")


class _Run(Generic[T]):
    """One ``run_all``: its source, its results, and the runners working on it.

    ``cond``'s lock guards every field; the source is only pulled while holding it.
    """

    def __init__(self, calls: Iterable[Callable[[], T]], ordered: bool, window: int) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.source = iter(calls)
        self.ordered = ordered
        self.window = window
        self.pulled = 0  # items taken from the source (each is run by a runner)
        self.yielded = 0
        self.exhausted = False
        self.source_error: BaseException | None = None  # raised by the source
        self.failure: BaseException | None = None  # raised by a call (a bug)
        self.stopped = False  # the consumer went away (break, exception, Ctrl-C)
        self.done: dict[int, T] = {}  # ordered: index -> result
        self.ready: collections.deque[T] = collections.deque()  # unordered
        self.runners = 0  # submitted or running
        self.queued = 0  # of which not yet started
        self.consumer_waits = False
        self.generation = 0


class BoundedExecutor:
    """A lazily started thread pool that never holds more than ``max_pending`` calls.

    ``ThreadPoolExecutor`` queues without bound; here ``submit`` blocks once
    ``max_pending`` calls are queued or running, so a producer cannot outrun the
    workers by more than that. ``run_all`` (behind ``map``) runs one runner per
    worker instead of one future per item: each runner takes the next item itself as
    soon as it is free, so no worker waits for the consumer to hand it work.
    """

    def __init__(self, max_workers: int, max_pending: int) -> None:
        self.max_workers = max_workers
        self.max_pending = max_pending
        self._reset()

    def _reset(self) -> None:
        # _lock guards _pool (creation and shutdown), _generation, _queued and _runs;
        # _gate counts pending calls.
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._gate = Permits(self.max_pending)
        # Bumped by shutdown(): runs begun before it stop taking items.
        self._generation = 0
        # Tasks submitted to the pool and not yet started (submit() calls and runners):
        # a runner seeing work queued behind it hands its thread over.
        self._queued = 0
        self._runs: weakref.WeakSet[_Run[Any]] = weakref.WeakSet()

    def after_fork(self) -> None:
        """Forget the parent's pool in a forked child: its threads do not exist here."""
        self._reset()

    def _get_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="syncfetch")
            return self._pool

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn``; blocks while ``max_pending`` calls are already pending."""
        pool = self._get_pool()
        self._gate.acquire(None)
        try:
            future = self._pool_submit(pool, fn, *args, **kwargs)
        except BaseException:
            self._gate.release()
            raise
        future.add_done_callback(lambda _: self._gate.release())
        # Map runners waiting for their consumer hand a thread over to this call.
        with self._lock:
            runs = list(self._runs)
        for run in runs:
            with run.cond:
                run.cond.notify_all()
        return future

    def _pool_submit(
        self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any, **kwargs: Any
    ) -> Future[T]:
        def started() -> T:
            with self._lock:
                self._queued -= 1
            return fn(*args, **kwargs)

        with self._lock:
            self._queued += 1
        try:
            future = pool.submit(started)
        except BaseException:
            with self._lock:
                self._queued -= 1
            raise
        future.add_done_callback(self._forget_if_cancelled)
        return future

    def _forget_if_cancelled(self, future: Future[Any]) -> None:
        if future.cancelled():  # it never started
            with self._lock:
                self._queued -= 1

    def shutdown(self) -> None:
        """Cancel what has not started, stop every ``run_all`` taking items, and wait
        for running calls (bounded by their timeouts)."""
        self.stop_runs()
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def stop_runs(self) -> None:
        """Stop every ``run_all`` begun so far from taking more items."""
        with self._lock:
            self._generation += 1
            runs = list(self._runs)
        for run in runs:
            with run.cond:
                run.cond.notify_all()

    def run_all(
        self,
        calls: Iterable[Callable[[], T]],
        ordered: bool,
        window: int,
        cut_short: Callable[[Callable[[], T]], T],
    ) -> Iterator[T]:
        """Run each call of a lazy iterable, at most ``window`` ahead of the consumer.

        The calls themselves must not raise (``map`` wraps errors into results). If
        the consumer stops (``break``, ``close()``, Ctrl-C), no more calls start and
        running ones finish on their own, bounded by their timeouts. If the executor is
        shut down meanwhile (``Session.close()``), running calls still yield their
        results, and every call not started yields ``cut_short(call)`` instead.
        """
        run: _Run[T] = _Run(calls, ordered, window)
        with self._lock:
            run.generation = self._generation
            self._runs.add(run)
        pool = self._get_pool()
        try:
            for _ in range(self.max_workers):
                self._start_runner(pool, run)
        except RuntimeError:  # the pool was shut down meanwhile
            pass
        cond = run.cond
        try:
            while True:
                with cond:
                    got = True
                    while True:
                        if run.failure is not None:
                            raise run.failure
                        if ordered:
                            if run.yielded in run.done:
                                result = run.done.pop(run.yielded)
                                break
                        elif run.ready:
                            result = run.ready.popleft()
                            break
                        # Every item taken is being run by a runner (taken and counted
                        # under this lock), so with none outstanding and no more to be
                        # taken, the run's results are all out.
                        if run.yielded == run.pulled and (run.exhausted or self._stopped(run)):
                            got = False
                            break
                        if run.runners == 0 and not self._stopped(run):
                            # Every runner handed its thread over to queued work that
                            # has since run: start one again.
                            self._start_runner(self._get_pool(), run)
                        run.consumer_waits = True
                        cond.wait()
                        run.consumer_waits = False
                    if got:
                        run.yielded += 1
                        if run.pulled - run.yielded == run.window - 1:
                            cond.notify_all()  # a runner may wait for room
                if not got:
                    break
                yield result
            if run.source_error is not None:
                raise run.source_error
            # Shut down before the source ran out: every item left is cut short.
            while not run.exhausted:
                with cond:
                    call = self._pull(run)
                if call is not None:
                    yield cut_short(call)
            if run.source_error is not None:
                raise run.source_error
        finally:
            with cond:
                run.stopped = True
                cond.notify_all()

    def _stopped(self, run: _Run[Any]) -> bool:
        return run.stopped or run.generation != self._generation

    def _pull(self, run: _Run[T]) -> Callable[[], T] | None:
        """The next call of the source, or ``None`` when it is exhausted (or raised)."""
        try:
            call = next(run.source, None)
        except BaseException as exc:
            run.source_error = exc
            call = None
        if call is None:
            run.exhausted = True
            run.cond.notify_all()
        return call

    def _start_runner(self, pool: ThreadPoolExecutor, run: _Run[Any]) -> None:
        """Submit one runner for ``run`` (with ``run.cond`` held or not: counters only)."""
        run.runners += 1
        run.queued += 1
        try:
            future = self._pool_submit(pool, self._runner, run)
        except BaseException:
            run.runners -= 1
            run.queued -= 1
            raise

        def forget_if_cancelled(future: Future[None]) -> None:
            if future.cancelled():  # shut down before it started
                with run.cond:
                    run.runners -= 1
                    run.queued -= 1
                    run.cond.notify_all()

        future.add_done_callback(forget_if_cancelled)

    def _runner(self, run: _Run[T]) -> None:
        """Take and run items of ``run`` until it ends, stops, or other work is queued."""
        cond = run.cond
        with cond:
            run.queued -= 1
        while True:
            with cond:
                while True:
                    if run.exhausted or self._stopped(run):
                        run.runners -= 1
                        cond.notify_all()
                        return
                    if run.pulled - run.yielded < run.window:
                        break
                    if self._queued > run.queued:
                        # Work is queued behind this idle runner (a submit() from the
                        # consumer's loop, say): it goes to the back of the queue.
                        run.runners -= 1
                        try:
                            self._start_runner(self._get_pool(), run)
                        except RuntimeError:  # shut down: the consumer cuts the rest short
                            cond.notify_all()
                        return
                    cond.wait()
                call = self._pull(run)
                if call is None:
                    run.runners -= 1
                    return
                index = run.pulled
                run.pulled += 1
            try:
                result = call()
            except BaseException as exc:  # calls are not meant to raise: end the run
                with cond:
                    run.failure = exc
                    run.exhausted = True
                    run.runners -= 1
                    cond.notify_all()
                raise
            with cond:
                if run.ordered:
                    run.done[index] = result
                    if index == run.yielded and run.consumer_waits:
                        cond.notify_all()
                else:
                    run.ready.append(result)
                    if run.consumer_waits:
                        cond.notify_all()
            # Work queued behind this runner (submit() calls, another map's runners)
            # gets its turn: this runner goes to the back of the queue.
            if self._queued > run.queued:
                with cond:
                    run.runners -= 1
                try:
                    with cond:
                        self._start_runner(self._get_pool(), run)
                except RuntimeError:  # shut down: the consumer cuts the rest short
                    with cond:
                        cond.notify_all()
                return

"""The ``syncfetch fetch`` job: read items, fetch them through a Session, write JSON Lines."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, Any

from requests import Request

from ._batch_input import BadLine, parse_line, read_items
from ._batch_output import Previous, bad_record, reason, record
from ._progress import ProgressLine, RecentRate, Ticker, status_text
from ._result import Result
from ._session import Session
from ._shard import take_shard


class BatchSession(Session):
    """A :class:`Session` whose :meth:`map` applies an item's own ``options`` (see ``Item``)."""

    def _run_item(
        self,
        index: int,
        item: str | Request,
        method: str,
        kwargs: dict[str, Any],
        overrides: dict[str, Any] | None = None,
    ) -> Result:
        options = getattr(item, "options", None)
        if options:
            kwargs = {**kwargs, **options}
        return super()._run_item(index, item, method, kwargs, overrides)


@dataclass
class Tally:
    """Counts for the progress line and the summary: OUTPUT's earlier records and this run's.

    Written only by the thread that consumes ``map`` and writes OUTPUT (the main one);
    the progress thread reads ``done`` and ``failed`` (single reads, atomic under the GIL).
    """

    previous: Previous = field(default_factory=Previous)
    total: int | None = None
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    failed: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    def add(self, rec: dict[str, Any]) -> None:
        if not rec["ok"]:
            self.failures[reason(rec)] += 1
            self.failed += 1
        self.done += 1

    @property
    def all_done(self) -> int:
        return len(self.previous.indices) + self.done

    @property
    def all_failed(self) -> int:
        return len(self.previous.indices) - self.previous.ok + self.failed

    def line(self, session: Session, rate: float) -> str:
        """The progress line: done (of the total), recent rate, ETA, failures, 429s."""
        stats = session.stats
        return status_text(
            self.all_done,
            self.total,
            rate,
            self.all_failed,
            stats.retries,
            stats.responses_429,
            time.monotonic() - self.started,
        )

    def summary(self, session: Session) -> str:
        """The summary printed at the end: OUTPUT's totals, then this run's."""
        took = time.monotonic() - self.started
        stats = session.stats
        failed = self.all_failed
        counts = f"{self.all_done - failed} ok, {failed} failed"
        if failed:
            failures = self.previous.failures + self.failures
            counts += " (" + ", ".join(f"{n} {why}" for why, n in failures.most_common()) + ")"
        tail = f"{stats.retries} retries, {stats.responses_429} x 429"
        if not self.previous.indices:
            return f"{self.done} items in {took:.1f} s: {counts}; {tail}"
        return (
            f"{self.all_done} items in OUTPUT: {counts}\n"
            f"{len(self.previous.indices)} done before, {self.done} done now in {took:.1f} s; "
            f"{tail}"
        )


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached the batch; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Signals:
    """SIGINT/SIGTERM raise :class:`Interrupted`, but never in the middle of a write.

    A signal during a write is held (``pending``) and raised once the line is out, so
    an interrupt never tears a line. Only the main thread can install handlers; elsewhere
    this does nothing.
    """

    def __init__(self) -> None:
        self.writing = False
        self.pending: int | None = None
        self._saved: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.writing:
            self.pending = signum
        else:
            raise Interrupted(signum)

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._saved[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)

    def check(self) -> None:
        if self.pending is not None:
            raise Interrupted(self.pending)


def run_fetch(
    session: Session,
    source: IO[bytes],
    out: IO[bytes],
    *,
    method: str,
    headers: dict[str, str],
    with_body: bool,
    redact_query: bool,
    tally: Tally,
    progress: ProgressLine,
    shard: tuple[int, int] | None = None,
) -> Tally:
    """Fetch every item of ``source`` with no record yet, writing one line per item to ``out``.

    :param shard: ``(k, n)`` to fetch only every n-th item from the k-th (``--shard``).
    :raises Interrupted: on SIGINT/SIGTERM, after the line being written is complete.
    """
    skip = tally.previous.indices
    lines: dict[int, int] = {}  # map() position -> input line, for items in flight
    signals = _Signals()

    def write(rec: dict[str, Any]) -> None:
        signals.writing = True
        try:
            out.write(json.dumps(rec).encode("ascii") + b"\n")
            out.flush()
            tally.add(rec)
        finally:
            signals.writing = False
        signals.check()

    def items() -> Iterator[str | Request]:
        position = 0
        for number, text in take_shard(read_items(source), shard):
            if number in skip:
                continue
            try:
                if isinstance(text, BadLine):
                    raise text
                item = parse_line(text, method)
            except BadLine as exc:
                write(bad_record(number, exc))
                continue
            lines[position] = number
            position += 1
            yield item

    recent = RecentRate()  # used by the ticker thread only

    def draw() -> None:
        progress.draw(tally.line(session, recent.rate(tally.done)))

    kwargs: dict[str, Any] = {"headers": headers} if headers else {}
    with signals, Ticker(draw) if progress.enabled else contextlib.nullcontext():
        for result in session.map(items(), method, ordered=False, **kwargs):
            write(record(result, lines.pop(result.index), method, with_body, redact_query))
    return tally

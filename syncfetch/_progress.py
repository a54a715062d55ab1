"""The live progress line of ``syncfetch fetch``, and log records printed above it."""

from __future__ import annotations

import collections
import importlib
import logging
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._result import Result
    from ._session import Session

CLEAR = "\r\x1b[K"


class RecentRate:
    """Completions per second over the last ``window`` seconds (a sliding window).

    Samples of the running count are kept at most every ``window / 20`` seconds, so
    memory stays bounded whatever the rate.

    :param window: seconds the rate looks back.
    :param clock: monotonic clock (injectable for tests).
    """

    def __init__(self, window: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._step = window / 20
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._samples.append((clock(), 0))

    def rate(self, done: int) -> float:
        """Record ``done`` (the running count) and return the recent rate."""
        now = self._clock()
        samples = self._samples
        if now - samples[-1][0] >= self._step:
            samples.append((now, done))
        # Keep one sample at or before the window's start, to measure the whole window.
        while len(samples) > 1 and samples[1][0] <= now - self.window:
            samples.popleft()
        then, done_then = samples[0]
        # At least a second: the first burst of a limit (N/s admits N at once) would
        # otherwise read as many times the limit.
        return (done - done_then) / max(now - then, min(1.0, self.window))


def duration(seconds: float) -> str:
    """``75`` -> ``"1m15s"``; ``4000`` -> ``"1h06m"``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class ProgressLine:
    """One status line on ``stream``, redrawn in place; other text is printed above it.

    :param stream: where to draw (stderr).
    :param enabled: draw at all; when false, :meth:`above` still prints.
    :param tty: the stream is a terminal (the line is cut to its width).
    """

    def __init__(self, stream: IO[str], *, enabled: bool, tty: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = tty
        # _lock guards writes to stream and _text (what the line shows now).
        self._lock = threading.Lock()
        self._text = ""

    def _fit(self, text: str) -> str:
        if not self.tty:
            return text
        width = shutil.get_terminal_size((80, 24)).columns
        return text[: max(width - 1, 10)]

    def draw(self, text: str) -> None:
        """Show ``text`` as the progress line."""
        if not self.enabled:
            return
        with self._lock:
            self._text = self._fit(text)
            self.stream.write(CLEAR + self._text)
            self.stream.flush()

    def above(self, text: str) -> None:
        """Print ``text`` on its own line(s), keeping the progress line below it."""
        with self._lock:
            if self._text:
                self.stream.write(CLEAR)
            self.stream.write(text + "\n")
            if self._text:
                self.stream.write(self._text)
            self.stream.flush()

    def clear(self) -> None:
        """Remove the progress line (before the summary)."""
        with self._lock:
            if self._text:
                self.stream.write(CLEAR)
                self.stream.flush()
            self._text = ""


class LineHandler(logging.Handler):
    """A logging handler that prints each record above the progress line."""

    def __init__(self, line: ProgressLine, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.line = line
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.line.above(self.format(record))
        except Exception:
            self.handleError(record)


class Ticker:
    """Redraws the progress line at start, every ``every`` seconds on a daemon thread, and at exit.

    :param draw: called to redraw (it reads the counters itself).
    :param every: seconds between redraws.
    """

    def __init__(self, draw: Callable[[], None], every: float = 0.25) -> None:
        self._draw = draw
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="syncfetch-progress", daemon=True)

    def _run(self) -> None:
        self._draw()
        while not self._stop.wait(self._every):
            self._draw()

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._draw()  # the final counts


def status_text(
    done: int,
    total: int | None,
    rate: float,
    failed: int,
    retries: int,
    responses_429: int,
    elapsed: float,
) -> str:
    """The progress line: done (of the total), recent rate, ETA, failures, retries, 429s."""
    text = f"{done:,}"
    if total is not None:
        total = max(total, done)
        text += f"/{total:,} ({100 * done / max(total, 1):.0f}%)"
    text += f" done, {rate:.1f}/s"
    if total is not None and rate > 0:
        text += f", ETA {duration((total - done) / rate)}"
    return (
        f"{text}, {failed:,} failed, {retries:,} retries, "
        f"{responses_429:,} x 429, {duration(elapsed)} elapsed"
    )


def track(results: Iterator[Result], session: Session, total: int | None) -> Iterator[Result]:
    """``results`` as they come, drawing progress on stderr when it is a terminal.

    With tqdm installed, its bar (with failures, retries and 429s after it); otherwise
    the line ``syncfetch fetch`` draws.
    """
    stream = sys.stderr
    isatty = getattr(stream, "isatty", None)
    if stream is None or isatty is None or not isatty():
        yield from results
        return
    try:
        tqdm: Any = importlib.import_module("tqdm").tqdm
    except ImportError:
        tqdm = None
    stats = session.stats
    base = (stats.retries, stats.responses_429)
    done = failed = 0
    started = time.monotonic()

    def counts() -> tuple[int, int]:
        stats = session.stats
        return stats.retries - base[0], stats.responses_429 - base[1]

    if tqdm is not None:
        bar: Any = tqdm(total=total, file=stream, unit="item", dynamic_ncols=True)
        shown = 0.0
        try:
            for result in results:
                done += 1
                failed += not result.ok
                now = time.monotonic()
                if now - shown >= 0.25:
                    shown = now
                    retries, r429 = counts()
                    bar.set_postfix_str(
                        f"{failed:,} failed, {retries:,} retries, {r429:,} x 429", refresh=False
                    )
                bar.update(1)
                yield result
            retries, r429 = counts()
            bar.set_postfix_str(f"{failed:,} failed, {retries:,} retries, {r429:,} x 429")
        finally:
            bar.close()
        return
    line = ProgressLine(stream, enabled=True, tty=True)
    recent = RecentRate()

    def draw() -> None:
        retries, r429 = counts()
        line.draw(
            status_text(
                done, total, recent.rate(done), failed, retries, r429, time.monotonic() - started
            )
        )

    try:
        with Ticker(draw):
            for result in results:
                done += 1
                failed += not result.ok
                yield result
    finally:
        stream.write("\n")
        stream.flush()

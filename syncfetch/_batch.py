"""The ``syncfetch fetch`` job: read items, fetch them through a Session, write JSON Lines."""

from __future__ import annotations

import base64
import codecs
import contextlib
import json
import math
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from requests import Request

from ._progress import ProgressLine, RecentRate, Ticker, duration
from ._redact import safe_url
from ._result import Result
from ._session import Session

#: Longest input line read; a longer one is an error line for its item (bounded memory).
MAX_LINE = 8 * 2**20

_FIELDS = ("method", "url", "headers", "params", "json", "data", "timeout", "allow_redirects")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP method (RFC 9110 token)


class BadLine(Exception):
    """An input line that cannot be an item: not UTF-8, invalid JSON, or bad fields."""


class Item(Request):
    """A JSON line's request, with the per-call options a ``Request`` cannot carry.

    :ivar options: ``timeout`` and ``allow_redirects`` given on the line.
    """

    options: dict[str, Any]


class BatchSession(Session):
    """A :class:`Session` whose :meth:`map` applies an :class:`Item`'s own options."""

    def _run_item(
        self, index: int, item: str | Request, method: str, kwargs: dict[str, Any]
    ) -> Result:
        options = getattr(item, "options", None)
        if options:
            kwargs = {**kwargs, **options}
        return super()._run_item(index, item, method, kwargs)


def check_method(value: object) -> str:
    """An HTTP method, upper-cased.

    :raises ValueError: for anything that is not an HTTP token.
    """
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise ValueError(f"invalid method {value!r}")
    return value.upper()


def _timeout(value: object) -> float | tuple[float, float]:
    def seconds(v: object) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
            raise BadLine(f'"timeout" must be seconds > 0 or [connect, read], not {value!r}')
        return float(v)

    if isinstance(value, list) and len(value) == 2:
        return seconds(value[0]), seconds(value[1])
    return seconds(value)


def parse_line(text: str, method: str) -> str | Request:
    """One input line: a URL, or a JSON object with ``url`` and optional request fields.

    :param text: the line, stripped.
    :param method: method of a plain URL line, and of a JSON line without ``method``.
    :raises BadLine: for invalid JSON, a non-object, unknown fields or ill-typed values.
    """
    if not text.startswith("{"):
        return text
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise BadLine(f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("url"), str):
        raise BadLine('a JSON line must be an object with a "url" string')
    unknown = set(obj) - set(_FIELDS)
    if unknown:
        raise BadLine(f"unknown fields {sorted(unknown)}: expected some of {list(_FIELDS)}")
    try:
        item_method = check_method(obj.get("method") or method)
    except ValueError as exc:
        raise BadLine(str(exc)) from None
    headers = obj.get("headers")
    if headers is not None and not (
        isinstance(headers, dict) and all(isinstance(v, str) for v in headers.values())
    ):
        raise BadLine('"headers" must be an object of strings')
    for name in ("params", "data"):
        if not isinstance(obj.get(name), (type(None), str, dict, list)):
            raise BadLine(f'"{name}" must be an object, a list or a string')
    options: dict[str, Any] = {}
    if "timeout" in obj:
        options["timeout"] = _timeout(obj["timeout"])
    if "allow_redirects" in obj:
        if not isinstance(obj["allow_redirects"], bool):
            raise BadLine('"allow_redirects" must be true or false')
        options["allow_redirects"] = obj["allow_redirects"]
    item = Item(
        method=item_method,
        url=obj["url"],
        headers=headers,
        params=obj.get("params"),
        json=obj.get("json"),
        data=obj.get("data"),
    )
    item.options = options
    return item


def read_items(stream: IO[bytes]) -> Iterator[tuple[int, str | BadLine]]:
    """(line number, text) for each line that is not blank or a ``#`` comment.

    A line that is not UTF-8, or longer than :data:`MAX_LINE`, gives a :class:`BadLine`
    in place of its text: it is still an item, with an error as its result.
    """
    number = 0
    while raw := stream.readline(MAX_LINE + 1):
        number += 1
        if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
            while (rest := stream.readline(MAX_LINE)) and not rest.endswith(b"\n"):
                pass
            yield number, BadLine(f"line longer than {MAX_LINE} bytes")
            continue
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        raw = raw.strip()
        if not raw or raw.startswith(b"#"):
            continue
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            yield (
                number,
                BadLine(f"not UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1}"),
            )
            continue
        if text:
            yield number, text


def count_items(path: str) -> int | None:
    """Items in the file at ``path``, or ``None`` when it is not a regular file."""
    try:
        if not os.path.isfile(path):
            return None  # a pipe or device: counting would consume it
        with open(path, "rb") as f:
            return sum(1 for _ in read_items(f))
    except OSError:
        return None


# -- redaction ---------------------------------------------------------------------------

_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_QUERY_IN_TEXT = re.compile(r"([?&][^=&\s'\"#<>]+=)([^&\s'\"#<>)]*)")


def drop_userinfo(url: str) -> str:
    """``url`` without ``user:password@``; otherwise unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def redact_url(url: str, query: bool) -> str:
    """Userinfo dropped; with ``query``, query values replaced by ``***`` too."""
    return safe_url(url) if query else drop_userinfo(url)


def redact_text(text: str, url: str | None, query: bool) -> str:
    """An error message with the URLs in it redacted as :func:`redact_url` does."""
    if url:
        text = text.replace(url, redact_url(url, query))
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0), query), text)
    if query:
        text = _QUERY_IN_TEXT.sub(r"\1***", text)
    return text


# -- OUTPUT ------------------------------------------------------------------------------


def _reason(rec: dict[str, Any]) -> str:
    error = rec.get("error")
    if isinstance(error, str) and error:
        return error.split(":", 1)[0]
    return f"HTTP {rec.get('status')}"


def _as_record(raw: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if (
        isinstance(rec, dict)
        and isinstance(rec.get("index"), int)
        and not isinstance(rec["index"], bool)
        and isinstance(rec.get("ok"), bool)
    ):
        return rec
    return None


@dataclass
class Previous:
    """What an OUTPUT file already holds (for ``--resume``).

    :ivar indices: input line numbers that have a record.
    :ivar ok: records with ``ok`` true.
    :ivar failures: failed records by reason.
    :ivar moved: invalid lines moved to ``OUTPUT.invalid``.
    :ivar torn: a torn last line (a crash mid-write) was cut off.
    """

    indices: set[int] = field(default_factory=set)
    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    moved: int = 0
    torn: bool = False


def scan_output(path: str) -> Previous:
    """Read OUTPUT for ``--resume``, repairing it so that every line is a record.

    Every valid record is kept. A torn last line (no newline, not a record) is cut off.
    Invalid lines elsewhere are moved to ``path + ".invalid"`` and blank lines dropped
    (the file is rewritten through a temporary file and an atomic rename); the items of
    invalid lines have no record and are fetched again.

    :raises OSError: when OUTPUT cannot be read or repaired.
    """
    prev = Previous()
    if not os.path.exists(path):
        return prev
    last_newline = True
    blank = False
    size = 0
    last_len = 0
    with open(path, "rb") as f:
        for raw in f:
            size += len(raw)
            last_len = len(raw)
            last_newline = raw.endswith(b"\n")
            rec = _as_record(raw)
            if rec is None:
                if not raw.strip():
                    blank = True
                elif not last_newline:
                    prev.torn = True
                else:
                    prev.moved += 1
                continue
            if rec["index"] in prev.indices:
                continue  # a duplicate counts once
            prev.indices.add(rec["index"])
            if rec["ok"]:
                prev.ok += 1
            else:
                prev.failures[_reason(rec)] += 1
    if prev.moved or blank:
        _move_invalid_lines(path)
    elif prev.torn:
        with open(path, "rb+") as f:
            f.truncate(size - last_len)
    elif not last_newline:
        with open(path, "ab") as f:
            f.write(b"\n")  # a complete record that only lacks its newline
    return prev


class OutputBusy(Exception):
    """Another process holds the lock on OUTPUT."""


def _lock(out: IO[bytes], path: str) -> None:
    """Lock OUTPUT against a second run writing it at the same time (POSIX only)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks
        return
    try:
        fcntl.flock(out.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OutputBusy(f"{path} is being written by another syncfetch run") from None


def open_output(path: str, resume: bool) -> tuple[IO[bytes], Previous]:
    """Open OUTPUT for appending, locked; emptied, or with ``resume`` scanned (see below).

    A regular file is locked before it is emptied or repaired, so a second run on the
    same OUTPUT stops with :class:`OutputBusy` instead of destroying the first one's work.

    :returns: the open file and what it already held (:func:`scan_output`).
    :raises OutputBusy: when another run holds the lock.
    :raises OSError: when OUTPUT cannot be opened, read or repaired.
    """
    out = open(path, "ab")  # noqa: SIM115 - returned to the caller
    try:
        if not os.path.isfile(path):
            return out, Previous()  # a device or pipe such as /dev/stdout
        _lock(out, path)
        if not resume:
            out.truncate(0)
            return out, Previous()
        previous = scan_output(path)
        if previous.moved:  # the file was replaced: lock the new one
            out.close()
            out = open(path, "ab")  # noqa: SIM115
            _lock(out, path)
        return out, previous
    except BaseException:
        out.close()
        raise


def _move_invalid_lines(path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with contextlib.ExitStack() as files:
            src = files.enter_context(open(path, "rb"))
            good = files.enter_context(open(tmp, "wb"))
            bad: IO[bytes] | None = None  # opened at the first invalid line
            for raw in src:
                if _as_record(raw) is not None:
                    good.write(raw if raw.endswith(b"\n") else raw + b"\n")
                elif raw.endswith(b"\n") and raw.strip():
                    if bad is None:
                        bad = files.enter_context(open(path + ".invalid", "ab"))
                    bad.write(raw)
            good.flush()
            os.fsync(good.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def record(
    result: Result, line: int, method: str, with_body: bool, redact_query: bool
) -> dict[str, Any]:
    """The JSON object written for one result.

    :param method: the method of a plain URL item (a JSON item carries its own).
    """
    resp = result.response
    url = result.url
    error = f"{type(result.error).__name__}: {result.error}" if result.error else None
    rec: dict[str, Any] = {
        "index": line,
        "url": redact_url(url, redact_query),
        "method": getattr(result.request, "method", None) or method,
        "status": resp.status_code if resp is not None else None,
        "ok": result.ok,
        "error": None if error is None else redact_text(error, url, redact_query),
        "attempts": result.attempts,
        "elapsed": round(result.elapsed, 4),
    }
    if with_body and resp is not None:
        try:
            rec["body"] = resp.content.decode("utf-8")
        except UnicodeDecodeError:
            rec["body"] = base64.b64encode(resp.content).decode("ascii")
            rec["body_encoding"] = "base64"
    return rec


def bad_record(line: int, exc: BadLine) -> dict[str, Any]:
    """The JSON object written for an input line that is not an item."""
    return {
        "index": line,
        "url": None,
        "method": None,
        "status": None,
        "ok": False,
        "error": f"BadLine: {exc}",
        "attempts": 0,
        "elapsed": 0.0,
    }


@dataclass
class Tally:
    """Counts for the progress line and the summary: OUTPUT's earlier records and this run's.

    Written by the thread that writes OUTPUT only; the progress thread reads the ints
    (single reads, atomic under the GIL).
    """

    previous: Previous = field(default_factory=Previous)
    total: int | None = None
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    def add(self, rec: dict[str, Any]) -> None:
        if rec["ok"]:
            self.ok += 1
        else:
            self.failures[_reason(rec)] += 1
        self.done += 1

    @property
    def all_done(self) -> int:
        return len(self.previous.indices) + self.done

    @property
    def all_failed(self) -> int:
        return self.all_done - self.previous.ok - self.ok

    def line(self, session: Session, rate: float) -> str:
        """The progress line: done (of the total), recent rate, ETA, failures, 429s."""
        stats = session.stats
        done = self.all_done
        text = f"{done:,}"
        if self.total is not None:
            total = max(self.total, done)
            text += f"/{total:,} ({100 * done / max(total, 1):.0f}%)"
        text += f" done, {rate:.1f}/s"
        if self.total is not None and rate > 0:
            text += f", ETA {duration((max(self.total, done) - done) / rate)}"
        return (
            f"{text}, {self.all_failed:,} failed, {stats.retries:,} retries, "
            f"{stats.responses_429:,} x 429, {duration(time.monotonic() - self.started)} elapsed"
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
) -> Tally:
    """Fetch every item of ``source`` with no record yet, writing one line per item to ``out``.

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
        for number, text in read_items(source):
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

    kwargs = {"headers": headers} if headers else {}
    with signals, Ticker(draw) if progress.enabled else contextlib.nullcontext():
        for result in session.map(items(), method, ordered=False, **kwargs):
            write(record(result, lines.pop(result.index), method, with_body, redact_query))
    return tally

"""OUTPUT of ``syncfetch fetch``: records, redaction, and the repair done by ``--resume``."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from ._batch_input import BadLine
from ._redact import safe_url
from ._result import Result

# -- redaction ---------------------------------------------------------------------------

_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_QUERY_IN_TEXT = re.compile(r"([?&][^=&\s'\"#<>]+=)([^&\s'\"#<>)]*)")


def drop_userinfo(url: str) -> str:
    """``url`` without ``user:password@``; otherwise unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    head, slash, rest = url.partition("/")
    if not parts.netloc and "@" in head:  # no scheme: "user:password@host/path"
        return head.rpartition("@")[2] + slash + rest
    return url


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


def reason(rec: dict[str, Any]) -> str:
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
                prev.failures[reason(rec)] += 1
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

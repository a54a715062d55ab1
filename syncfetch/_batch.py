"""The ``syncfetch fetch`` job: read items, fetch them through a Session, write JSON Lines."""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from requests import Request

from ._result import Result
from ._session import Session


class BadLine(Exception):
    """An input line that is neither a URL nor a valid JSON request object."""


def parse_line(text: str, method: str) -> str | Request:
    """One input line: a URL, or a JSON object with ``method``, ``url`` and request fields."""
    if not text.startswith("{"):
        return text
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadLine(f"invalid JSON: {exc}") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("url"), str):
        raise BadLine('a JSON line must be an object with a "url" string')
    unknown = set(obj) - {"method", "url", "headers", "params", "json", "data"}
    if unknown:
        raise BadLine(f"unknown fields {sorted(unknown)}")
    return Request(
        method=str(obj.get("method") or method).upper(),
        url=obj["url"],
        headers=obj.get("headers"),
        params=obj.get("params"),
        json=obj.get("json"),
        data=obj.get("data"),
    )


def read_items(stream: IO[str]) -> Iterator[tuple[int, str]]:
    """(line number, text) for each line that is not blank or a ``#`` comment."""
    for number, line in enumerate(stream, 1):
        text = line.strip()
        if text and not text.startswith("#"):
            yield number, text


def done_indices(path: str) -> set[int]:
    """Indices already in OUTPUT; a torn last line (a crash mid-write) is cut off."""
    done: set[int] = set()
    if not os.path.exists(path):
        return done
    with open(path, "rb+") as out:
        good_end = 0
        for raw in out:
            if not raw.endswith(b"\n"):
                break
            try:
                done.add(int(json.loads(raw)["index"]))
            except (ValueError, KeyError, TypeError):
                break
            good_end += len(raw)
        out.truncate(good_end)
    return done


def record(result: Result, line: int, with_body: bool) -> dict[str, Any]:
    """The JSON object written for one result."""
    resp = result.response
    rec: dict[str, Any] = {
        "index": line,
        "url": result.url,
        "method": getattr(result.request, "method", None) or "GET",
        "status": resp.status_code if resp is not None else None,
        "ok": result.ok,
        "error": f"{type(result.error).__name__}: {result.error}" if result.error else None,
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


@dataclass
class Tally:
    """Counts for the progress line and the summary."""

    total: int | None
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    def add(self, rec: dict[str, Any]) -> None:
        self.done += 1
        if rec["ok"]:
            self.ok += 1
        else:
            reason = rec["error"].split(":", 1)[0] if rec["error"] else f"HTTP {rec['status']}"
            self.failures[reason] += 1

    def line(self, session: Session) -> str:
        took = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / took
        stats = session.stats
        text = f"{self.done}"
        if self.total is not None:
            left = self.total - self.done
            eta = f", ETA {left / rate:.0f} s" if rate > 0 else ""
            text += f"/{self.total} ({100 * self.done / max(self.total, 1):.0f}%{eta})"
        return (
            f"{text} done, {rate:.1f}/s, {self.done - self.ok} failed, "
            f"{stats.retries} retries, {stats.responses_429} x 429"
        )

    def summary(self) -> str:
        took = time.monotonic() - self.started
        failed = self.done - self.ok
        text = f"{self.done} items in {took:.1f} s: {self.ok} ok, {failed} failed"
        if failed:
            text += " (" + ", ".join(f"{n} {why}" for why, n in self.failures.most_common()) + ")"
        return text


def run_fetch(
    session: Session,
    source: IO[str],
    out: IO[str],
    *,
    method: str,
    headers: dict[str, str],
    skip: set[int],
    with_body: bool,
    progress: bool,
    total: int | None,
) -> Tally:
    """Fetch every item of ``source`` not in ``skip``, writing one line per item to ``out``."""
    tally = Tally(total=None if total is None else total - len(skip))
    lines: dict[int, int] = {}  # map() position -> input line, for items in flight

    def write(rec: dict[str, Any]) -> None:
        out.write(json.dumps(rec) + "\n")
        out.flush()
        tally.add(rec)

    def items() -> Iterator[str | Request]:
        position = 0
        for number, text in read_items(source):
            if number in skip:
                continue
            try:
                item = parse_line(text, method)
            except BadLine as exc:
                write(
                    {
                        "index": number,
                        "url": None,
                        "method": None,
                        "status": None,
                        "ok": False,
                        "error": f"BadLine: {exc}",
                        "attempts": 0,
                        "elapsed": 0.0,
                    }
                )
                continue
            lines[position] = number
            position += 1
            yield item

    last_draw = 0.0
    kwargs = {"headers": headers} if headers else {}
    for result in session.map(items(), method, ordered=False, **kwargs):
        write(record(result, lines.pop(result.index), with_body))
        now = time.monotonic()
        if progress and now - last_draw > 0.1:
            last_draw = now
            sys.stderr.write("\r\x1b[K" + tally.line(session))
            sys.stderr.flush()
    if progress:
        sys.stderr.write("\r\x1b[K")
    return tally

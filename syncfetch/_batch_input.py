"""Input of ``syncfetch fetch``: lines of INPUT read as bytes, parsed into items."""

from __future__ import annotations

import codecs
import json
import math
import os
import re
from collections.abc import Iterator
from typing import IO, Any

from requests import Request

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

"""A crawl split over machines: ``syncfetch fetch --shard K/N`` and ``syncfetch merge``.

Shard K of N takes the input items (lines that are not blank or a ``#`` comment) whose
position among the items, counted from 0, is K modulo N: N processes given the same
input and K = 0..N-1 fetch every item exactly once between them, and with one
``--store`` they share one limit. Items keep their input line number (the ``index``
of each output record), so ``merge`` can put the parts back into input order.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any, TypeVar

from ._batch_input import read_items

T = TypeVar("T")

_SHARD = re.compile(r"(\d{1,9})/(\d{1,9})")


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with ``0 <= K < N``.

    :raises ValueError: naming the text and the expected form.
    """
    match = _SHARD.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"shard {text!r} is not of the form K/N (such as 0/4)")
    k, n = int(match.group(1)), int(match.group(2))
    if n < 1 or k >= n:
        raise ValueError(f"shard {text!r}: need 0 <= K < N (K counts from 0)")
    return k, n


def take_shard(
    items: Iterable[tuple[int, T]], shard: tuple[int, int] | None
) -> Iterator[tuple[int, T]]:
    """The ``(line number, item)`` pairs of shard ``(k, n)``: the items (as
    ``_batch_input.read_items`` yields them) whose position, counted from 0, is ``k``
    modulo ``n``. Line numbers are kept, so the parts merge back into input order."""
    if shard is None:
        yield from items
        return
    k, n = shard
    for position, pair in enumerate(items):
        if position % n == k:
            yield pair


@dataclasses.dataclass
class MergeReport:
    """What :func:`merge` found."""

    written: int = 0  # records written, one per item
    duplicates: int = 0  # records dropped: same index as one already kept
    bad_lines: list[str] = dataclasses.field(default_factory=list)  # "part.jsonl:7"
    missing: list[int] = dataclasses.field(default_factory=list)  # input line numbers
    missing_known: bool = False  # True when the input was given, so missing is exact

    def summary(self, limit: int = 20) -> str:
        text = f"{self.written} items merged"
        if self.duplicates:
            text += f", {self.duplicates} duplicate records dropped"
        if self.bad_lines:
            shown = ", ".join(self.bad_lines[:limit])
            more = "..." if len(self.bad_lines) > limit else ""
            text += f", {len(self.bad_lines)} unreadable lines skipped ({shown}{more})"
        if self.missing_known:
            if self.missing:
                shown = ", ".join(map(str, self.missing[:limit]))
                more = ", ..." if len(self.missing) > limit else ""
                text += f"; {len(self.missing)} items missing (input lines {shown}{more})"
            else:
                text += "; no item missing"
        elif self.missing:
            shown = ", ".join(map(str, self.missing[:limit]))
            more = ", ..." if len(self.missing) > limit else ""
            text += (
                f"; {len(self.missing)} line numbers missing between the first and the last "
                f"record ({shown}{more}; blank or comment lines look the same: pass the "
                "input file to know)"
            )
        return text


def _records(
    name: str, stream: Iterable[bytes | str], report: MergeReport
) -> Iterator[tuple[Any, bytes | str]]:
    for number, raw in enumerate(stream, 1):
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if not text.strip():
            continue
        try:
            rec = json.loads(text)
            int(rec["index"])
        except (ValueError, KeyError, TypeError):
            # A torn last line (a crash mid-write) or not ours: reported, not fatal.
            report.bad_lines.append(f"{name}:{number}")
            continue
        yield rec, raw


def merge(
    parts: Mapping[str, Iterable[Any]],
    out: IO[str],
    input_items: Iterable[int] | None = None,
) -> MergeReport:
    """Write the records of ``parts`` (name -> lines of a JSON Lines part) to ``out`` in
    input order, one per item (the first record seen for an index is kept).

    Records are held in memory by index (a part's lines are small; a 1M-item crawl of
    short records is a few hundred MB: split the merge by shard ranges beyond that).

    :param input_items: the line numbers of the input's items, if at hand: then the
        items with no record are listed exactly. Without it, the line numbers absent
        between the smallest and largest index are listed (blank and comment lines too).
    """
    report = MergeReport()
    found: dict[int, str] = {}
    for name, stream in parts.items():
        for rec, raw in _records(name, stream, report):
            index = int(rec["index"])
            if index in found:
                report.duplicates += 1
                continue
            found[index] = (
                raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            ).strip()
    for index in sorted(found):
        out.write(found[index] + "\n")
    report.written = len(found)
    if input_items is not None:
        report.missing_known = True
        report.missing = [number for number in input_items if number not in found]
    elif found:
        report.missing = [i for i in range(min(found), max(found) + 1) if i not in found]
    return report


# -- command line (wired into _cli.py) ---------------------------------------------------


def shard_arg(text: str) -> tuple[int, int]:
    """argparse type of ``--shard``."""
    import argparse

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_shard_arguments(fetch: Any) -> None:
    """``--shard K/N`` (and ``--store``, unless the fetch parser has it already)."""
    fetch.add_argument(
        "--shard",
        type=shard_arg,
        metavar="K/N",
        help="fetch only every N-th item, from the K-th (K counts from 0)",
    )
    if "--store" not in fetch._option_string_actions:
        fetch.add_argument(
            "--store",
            help="share the limit: sqlite:///path, redis://..., redis+cluster://..., "
            "redis+sentinel://... (what Session(store=) takes)",
        )


def shard_total(total: int | None, shard: tuple[int, int] | None) -> int | None:
    """How many of ``total`` items shard ``(k, n)`` has."""
    if total is None or shard is None:
        return total
    k, n = shard
    return (total - k + n - 1) // n if total > k else 0


def add_merge_arguments(parser: Any) -> None:
    parser.add_argument("parts", nargs="+", help="part files written by fetch --shard K/N")
    parser.add_argument("-o", "--output", required=True, help="merged JSON Lines file")
    parser.add_argument(
        "--input", help="the crawl's input file: lists exactly which items have no record"
    )


def merge_main(args: Any) -> int:
    """``syncfetch merge``: 0 when every item has a record, 1 when some are missing (or
    lines were unreadable), 2 on a usage or file error."""
    import contextlib
    import os
    import sys

    if os.path.realpath(args.output) in {os.path.realpath(p) for p in args.parts}:
        print(f"syncfetch merge: error: -o {args.output} is one of the parts", file=sys.stderr)
        return 2
    try:
        with contextlib.ExitStack() as stack:
            parts = {p: stack.enter_context(open(p, "rb")) for p in args.parts}
            items = None
            if args.input:
                source = stack.enter_context(open(args.input, "rb"))
                items = (number for number, _ in read_items(source))
            out = stack.enter_context(open(args.output, "w", encoding="utf-8"))
            report = merge(parts, out, items)
    except OSError as exc:
        print(f"syncfetch merge: error: {exc}", file=sys.stderr)
        return 2
    print(report.summary(), file=sys.stderr)
    return 1 if report.missing or report.bad_lines else 0

"""A crawl split over machines: ``syncfetch fetch --shard K/N`` and ``syncfetch merge``.

Shard K of N takes the input items (lines that are not blank or a ``#`` comment) whose
position among the items, counted from 0, is K modulo N: N processes given the same
input and K = 0..N-1 fetch every item exactly once between them, and with one
``--backend`` they share one limit. Items keep their input line number (the ``index``
of each output record), so ``merge`` can put the parts back into input order.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any

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


def is_item(line: str) -> bool:
    """An input line that is an item (as ``_batch.read_items`` counts them)."""
    text = line.strip()
    return bool(text) and not text.startswith("#")


def shard_lines(lines: Iterable[str], k: int, n: int) -> Iterator[str]:
    """``lines`` with every item not in shard ``k`` of ``n`` blanked (``"\\n"``), so the
    line numbers of the items kept are those of the input."""
    position = 0
    for line in lines:
        if is_item(line):
            keep = position % n == k
            position += 1
            if not keep:
                yield "\n"
                continue
        yield line


class ShardedInput:
    """A text stream that reads as ``source`` with only shard ``k`` of ``n`` left (see
    :func:`shard_lines`); what the batch job reads instead of the input file."""

    def __init__(self, source: IO[str], k: int, n: int) -> None:
        self.source = source
        self._lines = shard_lines(source, k, n)

    def __iter__(self) -> Iterator[str]:
        return self._lines

    def __next__(self) -> str:
        return next(self._lines)

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> ShardedInput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    input_lines: Iterable[str] | None = None,
) -> MergeReport:
    """Write the records of ``parts`` (name -> lines of a JSON Lines part) to ``out`` in
    input order, one per item (the first record seen for an index is kept).

    Records are held in memory by index (a part's lines are small; a 1M-item crawl of
    short records is a few hundred MB: split the merge by shard ranges beyond that).

    :param input_lines: the input, if at hand: then the items with no record are
        listed exactly. Without it, the line numbers absent between the smallest and
        largest index are listed (blank and comment lines among them).
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
    if input_lines is not None:
        report.missing_known = True
        report.missing = [
            number
            for number, line in enumerate(input_lines, 1)
            if is_item(line) and number not in found
        ]
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
    """``--shard K/N`` (and ``--backend``, unless the fetch parser has it already)."""
    fetch.add_argument(
        "--shard",
        type=shard_arg,
        metavar="K/N",
        help="fetch only every N-th item, from the K-th (K counts from 0)",
    )
    if "--backend" not in fetch._option_string_actions:
        fetch.add_argument(
            "--backend",
            help="share the limit: sqlite:///path, redis://..., redis+cluster://..., "
            "redis+sentinel://... (what Session(backend=) takes)",
        )


def shard_input(source: IO[str], shard: tuple[int, int] | None) -> IO[str]:
    """``source``, or only shard ``(k, n)`` of it."""
    if shard is None:
        return source
    return ShardedInput(source, *shard)  # type: ignore[return-value]


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
            source = stack.enter_context(open(args.input, encoding="utf-8")) if args.input else None
            out = stack.enter_context(open(args.output, "w", encoding="utf-8"))
            report = merge(parts, out, source)
    except OSError as exc:
        print(f"syncfetch merge: error: {exc}", file=sys.stderr)
        return 2
    print(report.summary(), file=sys.stderr)
    return 1 if report.missing or report.bad_lines else 0

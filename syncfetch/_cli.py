"""Command line: ``syncfetch fetch`` (batch) and ``syncfetch demo``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import IO, NoReturn

from ._batch import done_indices, run_fetch
from ._demo import add_demo_arguments, demo_main
from ._retry import RetryPolicy
from ._session import Session
from ._shard import (  # scale (issue 16): --shard, merge
    add_merge_arguments,
    add_shard_arguments,
    merge_main,
    shard_input,
    shard_total,
)


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"header {text!r} is not of the form 'Name: value'")
    return name.strip(), value.strip()


def _positive(kind: type[int] | type[float]):  # type: ignore[no-untyped-def]
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value <= 0 and not (kind is int and value == 0):
            raise argparse.ArgumentTypeError(f"{text!r} must be positive")
        return value

    return parse


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (and exit status 2), not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="syncfetch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="fetch every URL of a file, writing JSON Lines")
    fetch.add_argument("input", help="file of URLs or JSON request lines; - for stdin")
    fetch.add_argument("-o", "--output", required=True, help="JSON Lines output file")
    fetch.add_argument(
        "--rate", action="append", default=[], help="limit such as 10/s (repeatable)"
    )
    fetch.add_argument("--concurrency", type=_positive(int), default=10, help="attempts in flight")
    fetch.add_argument("--retries", type=_positive(int), default=3, help="retries per item")
    fetch.add_argument("--timeout", type=_positive(float), default=30.0, help="seconds per attempt")
    fetch.add_argument("--method", default="GET", help="method for plain URL lines")
    fetch.add_argument(
        "-H", "--header", type=_header, action="append", default=[], help="'Name: value'"
    )
    fetch.add_argument("--resume", action="store_true", help="skip items already in OUTPUT")
    fetch.add_argument("--no-body", action="store_true", help="do not store response bodies")
    fetch.add_argument("--progress", action="store_true", default=None, help="progress on stderr")
    fetch.add_argument("--quiet", dest="progress", action="store_false", help="no progress")
    add_shard_arguments(fetch)  # scale (issue 16)
    add_merge_arguments(sub.add_parser("merge", help="put the parts of a sharded crawl together"))
    demo = sub.add_parser("demo", help="syncfetch vs common recipes on a strict local API")
    add_demo_arguments(demo)
    return parser


def _count_lines(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip() and not line.lstrip().startswith(b"#"))
    except OSError:
        return None


def fetch_main(args: argparse.Namespace) -> int:
    try:
        session = Session(
            args.rate or None,
            max_concurrency=args.concurrency,
            retry=RetryPolicy(retries=args.retries),
            timeout=args.timeout,
            backend=args.backend,  # scale (issue 16)
        )
    except ValueError as exc:
        print(f"syncfetch: error: {exc}", file=sys.stderr)
        return 2
    try:
        source: IO[str] = sys.stdin if args.input == "-" else open(args.input, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        print(f"syncfetch: error: cannot read {args.input}: {exc.strerror}", file=sys.stderr)
        return 2
    source = shard_input(source, args.shard)  # scale (issue 16)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    total = None if args.input == "-" or not progress else _count_lines(args.input)
    total = shard_total(total, args.shard)  # scale (issue 16)
    skip = done_indices(args.output) if args.resume else set()
    tally = None
    try:
        with (
            session,
            source,
            open(args.output, "a" if args.resume else "w", encoding="utf-8") as out,
        ):
            try:
                tally = run_fetch(
                    session,
                    source,
                    out,
                    method=args.method.upper(),
                    headers=dict(args.header),
                    skip=skip,
                    with_body=not args.no_body,
                    progress=progress,
                    total=total,
                )
            except KeyboardInterrupt:
                print(
                    f"\nsyncfetch: interrupted; finished items are in {args.output}, "
                    "run again with --resume to fetch the rest",
                    file=sys.stderr,
                )
                return 130
    except OSError as exc:
        print(f"syncfetch: error: {exc}", file=sys.stderr)
        return 2
    print(tally.summary(), file=sys.stderr)
    return 0 if tally.done == tally.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``syncfetch`` command.

    :param argv: arguments without the program name (defaults to ``sys.argv[1:]``).
    :returns: the exit status: 0 all items ok, 1 some failed, 2 usage error, 130 interrupted.
    """
    args = build_parser().parse_args(argv)
    if args.command == "fetch":
        return fetch_main(args)
    if args.command == "demo":
        return demo_main(args)
    if args.command == "merge":  # scale (issue 16)
        return merge_main(args)
    return 2  # pragma: no cover - argparse rejects unknown commands

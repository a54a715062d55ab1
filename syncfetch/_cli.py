"""Command line: ``syncfetch fetch`` (batch) and ``syncfetch demo``."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import math
import os
import sqlite3
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import IO, Any, NoReturn

from ._batch import BatchSession, Interrupted, Tally, run_fetch
from ._batch_input import check_method, count_items
from ._batch_output import OutputBusy, open_output
from ._demo import add_demo_arguments, demo_main
from ._progress import LineHandler, ProgressLine
from ._rates import normalize_limits, parse_rate
from ._retry import RetryPolicy
from ._routes import RouteTable
from ._shard import add_merge_arguments, add_shard_arguments, merge_main, shard_total

log = logging.getLogger("syncfetch")

FETCH_DESCRIPTION = """\
Fetch every item of INPUT and write one JSON line per item to OUTPUT.

INPUT holds one item per line: a URL, or a JSON object such as
  {"method": "POST", "url": "https://api.example/x", "headers": {"X-A": "1"},
   "params": {"q": "1"}, "json": {"a": 1}, "data": "...", "timeout": 5,
   "allow_redirects": false}
Blank lines and lines starting with # are skipped. A line that is not UTF-8, not
valid JSON or has unknown fields is an error line for that item.

Each OUTPUT line has: index (the input line number), url, method, status, ok,
error, attempts, elapsed, and body (text, or base64 with body_encoding).
"""

FETCH_EPILOG = """\
rate limit state:
  With --rate, the limits are kept in an SQLite file shared by every syncfetch
  run of this machine (default: $XDG_CACHE_HOME/syncfetch/limits.db, else
  ~/.cache/syncfetch/limits.db), so back-to-back and parallel runs share one
  window. If that file cannot be used, a warning is printed and the run limits
  itself alone. --store chooses another store, --no-state turns sharing off.

exit status:
  0    every item succeeded (with --resume: every item in OUTPUT)
  1    some items failed; their lines and the summary say why
  2    usage error, or INPUT/OUTPUT cannot be read or written
  130  interrupted by Ctrl-C (143: SIGTERM); run again with --resume

examples:
  syncfetch fetch urls.txt -o out.jsonl --rate 20/s --rate 1000/h --concurrency 8
  syncfetch fetch urls.txt -o out.jsonl --rate 20/s --resume   # after Ctrl-C
  jq -c '.jobs[]' jobs.json | syncfetch fetch - -o out.jsonl --rate 5/s --redact
"""


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form 'Name: value'")
    return name.strip(), value.strip()


def _count(least: int):  # type: ignore[no-untyped-def]
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be >= {least}, not {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be seconds > 0 (finite), not {text!r}")
    return value


def _rate(text: str) -> str:
    try:
        parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _method(text: str) -> str:
    try:
        return check_method(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (and exit status 2), not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Renamed(argparse.Action):
    """A flag renamed before 1.0: using it is a usage error that names the new flag."""

    def __init__(self, option_strings: list[str], dest: str, *, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        parser.error(f"{option} is now called {self.new}: use {self.new} {values}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="syncfetch",
        description="syncfetch: rate-limited HTTP fetching from the command line.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser(
        "fetch",
        help="fetch every URL of a file, writing JSON Lines",
        description=FETCH_DESCRIPTION,
        epilog=FETCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = fetch.add_argument
    add("input", metavar="INPUT", help="file of URLs or JSON request lines; - for stdin")
    add("-o", "--output", metavar="OUTPUT", required=True, help="JSON Lines file to write")
    add(
        "--rate",
        action="append",
        default=[],
        type=_rate,
        help="limit per host such as 10/s, 600/min or 100/10s (repeatable). "
        "Default: NO LIMIT (only --concurrency bounds the load; a warning says so)",
    )
    add(
        "--limits",
        metavar="FILE",
        help="limits per route from a JSON or TOML file (.toml): a table of route "
        'patterns to limits, such as {"*": "10/s", "https://api.example.com/search/": '
        '"30/min"} (see the limits page). Not with --rate; shared like it (--store)',
    )
    add(
        "--concurrency",
        type=_count(1),
        default=10,
        metavar="N",
        help="requests in flight at once (default: %(default)s)",
    )
    add(
        "--retries",
        type=_count(0),
        default=3,
        metavar="N",
        help="retries per item after 429, 5xx and connection errors (default: %(default)s)",
    )
    add(
        "--timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="connect and read timeout per attempt (default: %(default)g)",
    )
    add(
        "--method",
        type=_method,
        default="GET",
        help="method for plain URL lines and JSON lines without one (default: %(default)s)",
    )
    add(
        "-H",
        "--header",
        type=_header,
        action="append",
        default=[],
        help="'Name: value' sent with every item (repeatable; default: none)",
    )
    add(
        "--resume",
        action="store_true",
        help="keep OUTPUT's records and fetch only the items without one (default: off, "
        "OUTPUT is overwritten)",
    )
    add("--no-body", action="store_true", help="do not store response bodies (default: store)")
    add(
        "--redact",
        action="store_true",
        help="replace query values by *** in the recorded url and error (default: off; "
        "user:password@ is always removed)",
    )
    state = fetch.add_mutually_exclusive_group()
    state.add_argument(
        "--store",
        metavar="SPEC",
        help="where limits live: memory, sqlite:///path.db or redis://host:port/db "
        "(default: the shared state file, see below)",
    )
    state.add_argument("--backend", action=_Renamed, new="--store", help=argparse.SUPPRESS)
    state.add_argument(
        "--no-state",
        action="store_true",
        help="limit this run alone, in memory (default: shared state file)",
    )
    add(
        "--progress",
        action="store_true",
        help="draw the progress line on stderr (default: only when stderr is a terminal)",
    )
    talk = fetch.add_mutually_exclusive_group()
    talk.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress line and no warnings, only the summary (default: warnings shown)",
    )
    talk.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also log every retry and pause (default: warnings only)",
    )
    add_shard_arguments(fetch)
    add_merge_arguments(sub.add_parser("merge", help="put the parts of a sharded crawl together"))
    demo = sub.add_parser("demo", help="syncfetch vs common recipes on a strict local API")
    add_demo_arguments(demo)
    return parser


def default_state_path() -> str | None:
    """``$XDG_CACHE_HOME/syncfetch/limits.db``, else ``~/.cache/syncfetch/limits.db``."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # the XDG spec says to ignore relative paths
        home = os.path.expanduser("~")
        if not os.path.isabs(home):
            return None
        base = os.path.join(home, ".cache")
    return os.path.join(base, "syncfetch", "limits.db")


def _state_store() -> str:
    """The default shared state, or ``"memory"`` (with a warning) if it cannot be used."""
    path = default_state_path()
    if path is None:
        log.warning(
            "syncfetch: no home directory for the limit state file; limiting this run alone"
        )
        return "memory"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        conn = sqlite3.connect(path, timeout=5)
        try:
            conn.execute("BEGIN IMMEDIATE")  # readable, writable, and a database
            conn.execute("PRAGMA schema_version").fetchone()
            conn.rollback()
        finally:
            conn.close()
    except (OSError, sqlite3.Error) as exc:
        log.warning(
            "syncfetch: cannot use the limit state file %s (%s); limiting this run alone",
            path,
            exc,
        )
        return "memory"
    return f"sqlite:///{path}"


@contextlib.contextmanager
def _logging_to(line: ProgressLine, level: int) -> Iterator[None]:
    """Print log records (any library's, and Python warnings) above the progress line."""
    handler = LineHandler(line, level)
    root = logging.getLogger()
    saved = log.level
    root.addHandler(handler)
    log.setLevel(level)  # other loggers keep the root's level (WARNING)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        log.setLevel(saved)


def _count_in_background(tally: Tally, path: str, shard: tuple[int, int] | None) -> None:
    """Set ``tally.total`` once INPUT is counted, without delaying the first request."""

    def count() -> None:
        tally.total = shard_total(count_items(path), shard)

    threading.Thread(target=count, name="syncfetch-count", daemon=True).start()


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def load_routes(path: str) -> RouteTable:
    """The route table in ``path``: JSON, or TOML when the name ends in ``.toml``.

    :raises ValueError: naming what is wrong (unreadable file, bad syntax, a bad
        pattern or limit).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ValueError(f"cannot read it: {exc.strerror}") from None
    if path.lower().endswith(".toml"):
        try:
            tomllib: Any = importlib.import_module("tomllib")
        except ImportError:  # Python 3.10
            raise ValueError("TOML needs Python 3.11 or later: give the routes as JSON") from None
        try:
            mapping: Any = tomllib.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"not TOML: {exc}") from None
    else:
        try:
            mapping = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError("expected a table of route patterns to limits")
    return RouteTable(mapping)


def _usage(message: str) -> int:
    print(f"syncfetch: error: {message}", file=sys.stderr)
    return 2


def fetch_main(args: argparse.Namespace) -> int:
    if args.progress and args.quiet:
        return _usage("--progress and --quiet cannot be used together")
    if os.path.isdir(args.output):
        return _usage(f"--output {args.output} is a directory")
    if args.resume and os.path.exists(args.output) and not os.path.isfile(args.output):
        return _usage(f"--resume needs --output to be a regular file, not {args.output}")
    if args.input != "-" and _same_file(args.input, args.output):
        return _usage("--output is INPUT: it would be overwritten")
    try:
        normalize_limits(args.rate)
    except ValueError as exc:
        return _usage(f"--rate: {exc}")
    if args.limits is not None:
        if args.rate:
            return _usage("--limits and --rate cannot be used together (put the rates in FILE)")
        try:
            args.routes = load_routes(args.limits)
        except ValueError as exc:
            return _usage(f"--limits {args.limits}: {exc}")
    else:
        args.routes = None
    tty = sys.stderr.isatty()
    line = ProgressLine(sys.stderr, enabled=args.progress or (tty and not args.quiet), tty=tty)
    level = logging.ERROR if args.quiet else logging.INFO if args.verbose else logging.WARNING
    with _logging_to(line, level):
        try:
            return _fetch(args, line)
        except KeyboardInterrupt:  # before or after the fetch loop (which handles its own)
            line.clear()
            print("syncfetch: interrupted", file=sys.stderr)
            return 130


def _fetch(args: argparse.Namespace, line: ProgressLine) -> int:
    try:
        source: IO[bytes] = (
            sys.stdin.buffer if args.input == "-" else open(args.input, "rb")  # noqa: SIM115
        )
    except OSError as exc:
        return _usage(f"cannot read {args.input}: {exc.strerror}")
    with contextlib.nullcontext() if source is sys.stdin.buffer else source:
        return _fetch_from(args, line, source)


def _fetch_from(args: argparse.Namespace, line: ProgressLine, source: IO[bytes]) -> int:
    store: Any
    if args.store is not None:
        store = args.store
    elif args.no_state or not (args.rate or args.routes):
        store = "memory"  # no limit to share
    else:
        store = _state_store()
    try:
        session = BatchSession(
            args.routes or args.rate or None,
            max_concurrency=args.concurrency,
            retry=RetryPolicy(retries=args.retries),
            timeout=args.timeout,
            store=store,
            on_backend_error="fallback",
        )
    except ValueError as exc:
        return _usage(f"--store: {exc}" if "store" in str(exc) else str(exc))
    except ImportError as exc:
        return _usage(f"--store {args.store}: {exc} (pip install 'syncfetch[redis]')")
    tally = Tally()
    try:
        with session:
            try:
                out, tally.previous = open_output(args.output, args.resume)
            except OutputBusy as exc:
                return _usage(str(exc))
            if not args.rate and args.routes is None:
                log.warning(
                    "syncfetch: no --rate given: requests are not rate limited "
                    "(at most %d in flight)",
                    args.concurrency,
                )
            if tally.previous.moved:
                log.warning(
                    "syncfetch: %d invalid lines of %s moved to %s.invalid; "
                    "their items are fetched again",
                    tally.previous.moved,
                    args.output,
                    args.output,
                )
            if line.enabled and args.input != "-":
                _count_in_background(tally, args.input, args.shard)
            with out:
                try:
                    run_fetch(
                        session,
                        source,
                        out,
                        method=args.method,
                        headers=dict(args.header),
                        with_body=not args.no_body,
                        redact_query=args.redact,
                        tally=tally,
                        progress=line,
                        shard=args.shard,
                    )
                except KeyboardInterrupt as exc:
                    line.clear()
                    print(
                        f"syncfetch: interrupted; finished items are in {args.output}, "
                        "run again with --resume to fetch the rest",
                        file=sys.stderr,
                    )
                    print(tally.summary(session), file=sys.stderr)
                    return 128 + exc.signum if isinstance(exc, Interrupted) else 130
    except OSError as exc:
        line.clear()
        return _usage(str(exc))
    line.clear()
    print(tally.summary(session), file=sys.stderr)
    return 0 if tally.all_failed == 0 else 1


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
    if args.command == "merge":
        return merge_main(args)
    return 2  # pragma: no cover - argparse rejects unknown commands

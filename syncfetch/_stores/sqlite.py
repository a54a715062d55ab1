"""Sliding-window limits shared by the processes of one machine, kept in an SQLite file.

pyrate-limiter's ``SQLiteBucket`` is not used. Measured (field notes): one table is
one bucket, so per-host limits would need a table per host; without its file lock
the check and the insert are not atomic and 4 processes went 10-15% over the
limit; with the lock it was exact but unfair (shares [0, 0, 60, 0]); and its leak
thread dies on the first backend error and does not exist in a forked child. Here
the sliding-window log is a plain table keyed by bucket key, the check-and-insert
is one ``BEGIN IMMEDIATE`` transaction, waiters queue with tickets, and the
acquiring processes sweep expired rows themselves.

Why the queue, measured with 4 processes x 8 threads at 40/s (``python -m
tests.test_backends sqlite sqlite-unfair``): without it every waiting thread computes
the same wake-up (the same oldest entry leaves the window), all wake together and all
but one go back to sleep: 3.6-4.7 transactions per token, worst process 0.63-0.93 of
an equal share over 7 runs. With it each waiter wakes for its own place: 1.9-2.0
transactions per token, worst share 0.81-0.97 over 10 runs.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import logging
import math
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from pyrate_limiter import Rate
from requests.exceptions import RequestException

from . import base
from .base import DEFAULT_ARRIVAL, Charge, Token
from .shared import (
    BACKEND_DEADLINE,
    TICKET_GRACE_MS,
    UNSETTLED_MAX,
    OutOfTime,
    SharedLimiter,
    raise_if_late,
)

log = logging.getLogger("syncfetch")
T = TypeVar("T")


# -- SQLite ----------------------------------------------------------------------------

_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS syncfetch_log (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    ts INTEGER NOT NULL,
    exp INTEGER NOT NULL,
    hold INTEGER NOT NULL DEFAULT 0,
    cost INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS syncfetch_log_key_ts ON syncfetch_log (key, ts);
CREATE INDEX IF NOT EXISTS syncfetch_log_exp ON syncfetch_log (exp);
CREATE INDEX IF NOT EXISTS syncfetch_log_key_hold ON syncfetch_log (key, hold);
CREATE TABLE IF NOT EXISTS syncfetch_pause (
    key TEXT PRIMARY KEY,
    until INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS syncfetch_queue (
    ticket INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    exp INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS syncfetch_queue_key ON syncfetch_queue (key, ticket);
CREATE TABLE IF NOT EXISTS syncfetch_mqueue (
    call INTEGER NOT NULL,
    key TEXT NOT NULL,
    cost INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    score INTEGER NOT NULL,
    exp INTEGER NOT NULL,
    PRIMARY KEY (key, call)
);
CREATE TABLE IF NOT EXISTS syncfetch_weighted (
    key TEXT PRIMARY KEY,
    until INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS syncfetch_meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
COMMIT;
"""
# syncfetch_log: one row per token; ts = when taken (ms, re-dated by settle), exp =
#   ts (or hold) + the writer's longest window: no process counts the row after that,
#   so the sweep may delete it. (Processes with different limits may share a file: each
#   counts every row within its own windows, and nobody deletes a row another still
#   needs.) hold: 0 once settled; before, the take + UNSETTLED_MAX: until then the
#   row counts as dated now (its request may not have left yet), then as dated hold
#   (_DATE). cost: the tokens the row stands for (a call's cost; 0 once refunded);
#   windows count SUM(cost). hold and cost are added to files of earlier versions on
#   open (_add_columns).
# syncfetch_pause: key -> pause end (ms), shared by every process.
# syncfetch_queue: the fair queue, one ticket per waiting thread; exp is when a ticket
#   whose owner stopped refreshing it (a dead process) stops blocking the others.
# syncfetch_mqueue: the queue of the calls of _take_many (routes, costs): one row per
#   key a waiting call lacks room on, with its cost there and its score, priority x
#   AGING (ms) - when it began waiting (wall ms): a higher score goes first (so a
#   priority, aged by the wait, then arrival); exp as in syncfetch_queue, its planned
#   wake-up plus TICKET_GRACE_MS. A waiter wakes for its own place, after those of
#   the calls ahead. A call of another priority holds the later ones back while it
#   waits (as KeyedLimiter's waiters do); one of the same priority only once its
#   wake-up is due: room that a refund (correct) frees before then goes to whoever
#   comes, instead of idling until the sleepers wake (measured: with every call's 5
#   corrected to 2, 5 calls a second passed where 10 could).
# syncfetch_weighted: key -> when its last row of a cost other than 1 expires. Until
#   then its windows are counted with SUM(cost) (_FULL_AT); a key without one (the plain
#   one-token calls) is counted by rows, which is cheaper (_NTH_AT; measured in
#   tests/test_sqlite_routes.py's ``cost``).
# syncfetch_meta: "next_sweep" (ms), so that one process sweeps per interval.

# The date a row counts with at ?1 = now: its ts once settled (hold = 0), else now, but
# no later than its hold (a process that died holding it stops blocking its place).
_DATE = "max(ts, min(?1, hold))"
# The date of the ?4-th newest row (from 0) of key ?2 in the window after ?3: with every
# row one token, the one that must leave before one more fits beside ?4 of them.
_NTH_AT = (
    f"SELECT {_DATE} AS d FROM syncfetch_log WHERE key = ?2 AND (ts > ?3 OR hold > ?3)"
    " ORDER BY d DESC LIMIT 1 OFFSET ?4"
)
# The date of the newest row of key ?2 at which the tokens of the window after ?3 (rows
# counted newest first, each with its cost) exceed ?4: that row, and every older one, must
# leave the window before ?4 tokens fit beside the rest; none: they fit now. (_DATE > ?3,
# written so that both indexes serve it. Window functions need SQLite >= 3.25; before,
# _ROWS_IN's rows are summed in Python.)
_WINDOW_FUNCTIONS = sqlite3.sqlite_version_info >= (3, 25)
_ROWS_IN = (
    f"SELECT {_DATE} AS d, cost FROM syncfetch_log WHERE key = ?2 AND (ts > ?3 OR hold > ?3)"
    " ORDER BY d DESC"
)
_FULL_AT = (
    "SELECT d FROM (SELECT d, sum(cost) OVER (ORDER BY d DESC ROWS UNBOUNDED PRECEDING) AS s"
    f" FROM (SELECT {_DATE} AS d, cost FROM syncfetch_log"
    " WHERE key = ?2 AND (ts > ?3 OR hold > ?3))) WHERE s > ?4 LIMIT 1"
)

# Polling for another process's write lock: first retry after 0.1 ms, doubling up to
# 2 ms. SQLite's own busy handler sleeps 1, 2, 5, 10, ... then 100 ms between tries, so a
# waiter can keep missing a lock that others take and release in under a millisecond.
# Measured, 4 processes taking tokens as fast as they could (2 cores): with SQLite's
# handler the slowest acquire+settle took 0.8-1.7 s, and under heavier load a process
# waited out the whole 5 s busy_timeout ("database is locked") in 2 of ~20 runs at
# 40/s; polling kept the slowest to 0.1-0.4 s (medians equal, about 0.25 ms).
_BUSY_FIRST_SLEEP = 0.0001
_BUSY_MAX_SLEEP = 0.002
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
# A waiter for this process's connection lock re-checks its deadline and close() this often.
_LOCK_SLICE = 0.05
# Seconds a clean-up (leaving the queue) may wait for the lock or a busy file.
_CLEANUP_WAIT = 0.1
# How often a process checks that its database file is still the one at ``path`` (one
# os.stat): deleted or replaced, the file would split the processes into two budgets.
_FILE_CHECK_EVERY = 0.1
# A change of the wall clock against the monotonic clock larger than this (ms) is a step
# of the wall clock (NTP slews it by at most 0.5 ms a second).
_CLOCK_STEP_MS = 50
# Free pages are returned to the file system once there are this many and they are
# over a quarter of the file (a burst of many hosts); fewer are simply reused.
_VACUUM_MIN_FREE_PAGES = 128

# Connections opened before a fork, kept referenced in the child so they are never
# closed there: SQLite forbids using a connection across fork(), closing included (a
# close may checkpoint the WAL from stale in-memory lock state).
_ABANDONED: list[sqlite3.Connection] = []


def _is_busy(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` means "another connection holds the lock" (worth waiting for)."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc)
    )


def _add_columns(conn: sqlite3.Connection) -> None:
    """Give the token log of a file from an earlier version its ``hold`` column (0:
    settled, as its rows are to the processes of that version, which ignore the column)
    and its ``cost`` column (1: one token a row, as those processes count), before
    ``_SCHEMA`` indexes them. One read, for a new file or an up-to-date one."""

    def missing() -> list[str]:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(syncfetch_log)")]
        return [c for c in ("hold", "cost") if columns and c not in columns]

    if not missing():
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for column in missing():  # another process may have added them meanwhile
            default = 0 if column == "hold" else 1
            conn.execute(
                f"ALTER TABLE syncfetch_log ADD COLUMN {column} INTEGER NOT NULL DEFAULT {default}"
            )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _weigh(conn: sqlite3.Connection, keys: list[tuple[str, int]]) -> None:
    """Note that each ``(key, exp)`` has a row weighing other than 1 until ``exp`` (ms):
    its windows are summed by cost until then (``syncfetch_weighted``)."""
    if keys:
        conn.executemany(
            "INSERT INTO syncfetch_weighted (key, until) VALUES (?, ?) ON CONFLICT (key)"
            " DO UPDATE SET until = max(until, excluded.until)",
            keys,
        )


def _dequeue(conn: sqlite3.Connection, call: _Call, keys: list[str]) -> None:
    """Delete the queue rows of ``call`` on ``keys`` (all its rows: ``call.keys``)."""
    if keys:
        conn.executemany(
            "DELETE FROM syncfetch_mqueue WHERE key = ? AND call = ?",
            [(name, call.id) for name in keys],
        )
    if keys is call.keys:
        call.keys = []


def _wall_ms() -> int:
    """Now on the wall clock, in whole ms (rounded up, like KeyedLimiter's token times).

    The wall clock, not the monotonic one: ``time.monotonic()`` has an arbitrary
    origin that differs between processes (and after a reboot), while every process of
    a machine reads the same ``time.time()``. The price is that a step of the system
    clock (NTP, an administrator) shifts the windows: a step back makes recent rows
    look newer (longer waits, never an excess); a step forward would expire them early,
    so the rows are moved with it (``SQLiteLimiter._follow_clock_step``, Linux only).
    """
    return math.ceil(time.time() * 1000)


@functools.lru_cache(maxsize=1)
def _boot_id() -> int | None:
    """This boot of the machine, as a number (Linux); ``None`` where it is not known.

    The monotonic clock starts again at each boot, so a wall-minus-monotonic offset
    recorded before a reboot says nothing about a clock step.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return int(f.read().strip().replace("-", "")[:15], 16)
    except (OSError, ValueError):
        return None


def _file_id(path: str | None) -> tuple[int, int] | None:
    """The identity of the file at ``path`` (``None``: there is none, or no path)."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


@dataclasses.dataclass
class _Row:
    """Handle of a token in ``syncfetch_log`` (used by the one thread holding the token)."""

    rowid: int
    ts: int  # when taken
    taken_at: float  # time.monotonic() when ts was read
    dated: int | None = None  # the row's ts since dated by the send (_sent)
    cost: int = 1  # the row's weight, changed by _correct


@dataclasses.dataclass
class _Charged:
    """One row of a :class:`_Rows` handle: a charge's key, cost and longest window."""

    rowid: int
    key: str
    cost: int
    horizon: int  # ms: the row expires this long after its date


@dataclasses.dataclass
class _Rows:
    """Handle of a token of several charges (``_take_many``): one row each, taken together."""

    rows: list[_Charged]
    ts: int  # when taken
    taken_at: float  # time.monotonic() when ts was read
    dated: int | None = None  # the rows' ts since dated by the send (_sent)


@dataclasses.dataclass
class _Call:
    """A ``_take_many`` call's place in ``syncfetch_mqueue`` (used by its one thread)."""

    id: int  # random: calls of every process share the table
    priority: int
    score: int | None = None  # set when it first waits
    keys: list[str] = dataclasses.field(default_factory=list)  # its rows in the queue


@dataclasses.dataclass
class _Step:
    """Outcome of one look at the log: a row taken, or how long to wait and the ticket."""

    row: _Row | None
    wait_ms: int
    ticket: int | None


class SQLiteLimiter(SharedLimiter):
    """Per-key sliding-window log in an SQLite file, shared by the processes of one machine.

    Each acquire is one ``BEGIN IMMEDIATE`` transaction (check the pause and every
    window, then insert), so processes never both take the last place. A thread that
    must wait sleeps without any lock, for exactly as long as the oldest blocking row
    needs to leave its window, then looks again. Waiting threads hold tickets in a
    shared queue and each takes a token only when the free places cover everyone ahead
    of it, so they take turns instead of all waking for the same place (see the
    module docstring for the measured difference).

    :param path: the database file (created with its tables if missing).
    :param rates: binding rates, as returned by ``normalize_limits``.
    :param margin: seconds added to every window.
    :param arrival: seconds after a send by which the server counts it (see
        ``KeyedLimiter``).
    :param on_backend_error: ``"raise"`` or ``"fallback"`` (see :class:`SharedLimiter`).
    :param unsettled_max: seconds a token not yet settled counts as taken now, for every
        process (``UNSETTLED_MAX``; a bound for processes that die holding one).
    :param busy_timeout: seconds to wait for another process's write lock before the
        backend counts as unavailable.
    :param sweep_every: seconds between deletions of expired rows (one process does it
        per interval).
    :param fair: use the ticket queue; ``False`` only to measure what it is for.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        rates: list[Rate],
        *,
        margin: float = 0.0,
        on_backend_error: str = "raise",
        arrival: float = DEFAULT_ARRIVAL,
        unsettled_max: float = UNSETTLED_MAX,
        busy_timeout: float = 5.0,
        sweep_every: float = 5.0,
        fair: bool = True,
    ) -> None:
        self.path = os.fspath(path)
        # The file actually opened (and checked, see _check_file): resolved once, so a
        # later chdir() does not move the limit to another file. None for an in-memory
        # database or a URI, which are not checked.
        self._file: str | None = (
            None
            if self.path == ":memory:" or self.path.startswith("file:")
            else os.path.abspath(self.path)
        )
        super().__init__(
            rates,
            margin=margin,
            arrival=arrival,
            on_backend_error=on_backend_error,
            name=f"sqlite:///{self.path}",
            errors=(sqlite3.Error, OSError),
            unsettled_max=unsettled_max,
        )
        self.busy_timeout = busy_timeout
        self.sweep_every = sweep_every
        self.fair = fair
        # _lock guards _conn, _pid and _next_sweep, and serializes this process's
        # transactions on the one connection. Measured with 4 processes x 8 threads
        # doing this module's transaction, one shared connection and one connection
        # per thread both ran 18-28k transactions/s; a shared one is kept because a
        # thread-local connection cannot be kept from being closed in a forked child
        # (see _ABANDONED). Never held while sleeping for a token.
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._next_sweep = time.monotonic()
        # (st_dev, st_ino) of the file _conn opened, and when to look at path again;
        # guarded by _lock like _conn.
        self._file_id: tuple[int, int] | None = None
        self._check_file_at = 0.0
        # The clocks as read by the current write transaction (_follow_clock_step), wall
        # ms and monotonic seconds; guarded by _lock like _conn.
        self._now = 0
        self._now_mono = 0.0

    def __repr__(self) -> str:
        return f"SQLiteLimiter({self.path!r}, {[str(r) for r in self.rates]})"

    # -- connection ----------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """This process's connection, opened on first use. Caller holds ``_lock``."""
        if self._pid != os.getpid():  # forked without after_fork (not through Session)
            self._abandon()
        if self._conn is not None and time.monotonic() >= self._check_file_at:
            self._check_file()
        if self._conn is None:
            self._conn = self._open()
            self._file_id = _file_id(self._file)
            self._check_file_at = time.monotonic() + _FILE_CHECK_EVERY
        return self._conn

    def _check_file(self) -> None:
        """Reopen ``path`` if the file was deleted or replaced since this process opened
        it, carrying the rows still in a window over (other processes now use the new
        file: without this, each side would have its own budget). Caller holds ``_lock``."""
        self._check_file_at = time.monotonic() + _FILE_CHECK_EVERY
        now_id = _file_id(self._file)
        if now_id == self._file_id:
            return
        old = self._conn
        assert old is not None
        rows: list[tuple[str, int, int, int, int]] = []
        with contextlib.suppress(sqlite3.Error):
            rows = old.execute(
                "SELECT key, ts, exp, hold, cost FROM syncfetch_log WHERE exp > ?", (_wall_ms(),)
            ).fetchall()
        log.warning(
            "syncfetch: %s was %s while in use; reopening it, with the %d tokens still in a window",
            self.name,
            "deleted" if now_id is None else "replaced",
            len(rows),
            extra={"syncfetch_backend": self.name},
        )
        self._drop()
        conn = self._conn = self._open()
        self._file_id = _file_id(self._file)
        if rows:
            self._retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"))
            try:
                conn.executemany(
                    "INSERT INTO syncfetch_log (key, ts, exp, hold, cost) VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                _weigh(conn, [(key, exp) for key, _, exp, _, cost in rows if cost != 1])
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _retry_busy(self, fn: Callable[[], T]) -> T:
        """Run ``fn``, again while another process holds the lock, for up to
        ``busy_timeout`` seconds (then the busy error escapes: backend unavailable).

        Within a caller's wait (:data:`BACKEND_DEADLINE` set) the retries also stop at
        the caller's deadline (:class:`OutOfTime`) and at ``close()`` (``self.sleep``
        raises ``SessionClosed``).
        """
        bound = BACKEND_DEADLINE.get()
        give_up = time.monotonic() + self.busy_timeout
        sleep = _BUSY_FIRST_SLEEP
        while True:
            try:
                return fn()
            except sqlite3.Error as exc:
                if not _is_busy(exc):
                    raise
                now = time.monotonic()
                if bound is not None and bound < give_up and now + sleep > bound:
                    raise OutOfTime(
                        f"{self.name} stayed locked past the caller's deadline"
                    ) from exc
                if now + sleep > give_up:
                    raise
            if bound is None:
                time.sleep(sleep)
            else:
                self.sleep(sleep)
            sleep = min(sleep * 2, _BUSY_MAX_SLEEP)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold ``_lock``; within a caller's wait, give up at its deadline (:class:`OutOfTime`)
        or at ``close()``, instead of queueing behind another thread's busy retries."""
        bound = BACKEND_DEADLINE.get()
        if bound is None:
            with self._lock:
                yield
            return
        while not self._lock.acquire(timeout=max(0.0, min(_LOCK_SLICE, bound - time.monotonic()))):
            self.sleep(0)  # SessionClosed after close()
            if time.monotonic() >= bound:
                raise OutOfTime(f"{self.name} stayed busy past the caller's deadline")
        try:
            yield
        finally:
            self._lock.release()

    def _open(self) -> sqlite3.Connection:
        return self._retry_busy(self._open_once)

    def _open_once(self) -> sqlite3.Connection:
        # timeout=0: no SQLite busy handler; _retry_busy waits instead (see _BUSY_*).
        # check_same_thread=False: the connection is shared, under _lock.
        # isolation_level=None: no implicit transactions; acquire says BEGIN IMMEDIATE,
        # which takes the write lock up front (a deferred transaction upgraded later
        # fails with SQLITE_BUSY without waiting in WAL mode).
        conn = sqlite3.connect(
            self._file or self.path, timeout=0, isolation_level=None, check_same_thread=False
        )
        try:
            # Only takes effect before the first table exists: lets the sweep give
            # pages back to the file system (PRAGMA incremental_vacuum).
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            # WAL: readers never block the writer, and commits are cheap.
            conn.execute("PRAGMA journal_mode = WAL").fetchall()
            # NORMAL is consistent in WAL mode; losing the last ms of tokens to a power
            # cut does not matter.
            conn.execute("PRAGMA synchronous = NORMAL")
            # Truncate the WAL file back to 4 MB after each checkpoint.
            conn.execute("PRAGMA journal_size_limit = 4194304")
            _add_columns(conn)
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def _abandon(self) -> None:
        """Forget the connection without closing it (it belongs to the parent process)."""
        if self._conn is not None:
            _ABANDONED.append(self._conn)
        self._conn = None
        self._pid = os.getpid()

    def _drop(self) -> None:
        """Close the connection after an error; the next use opens a fresh one."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; on any error, roll back and drop the
        connection. Caller holds ``_lock``."""
        conn = self._connection()
        try:
            self._retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"))
            try:
                self._follow_clock_step(conn)
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            if not isinstance(exc, RequestException):  # SessionClosed: nothing wrong with it
                self._drop()
            raise

    def _follow_clock_step(self, conn: sqlite3.Connection) -> None:
        """Move every live row forward by a forward step of the wall clock.

        Rows are dated on the wall clock; a step forward would make them look older and
        leave their windows early. The wall clock minus the monotonic clock (the same
        for every process of a machine, until it reboots) changes only when the wall
        clock steps or is slewed. The first transaction to see it change by more than
        ``_CLOCK_STEP_MS`` since the last one (in any process) moves the rows forward
        by the step; a step back only records the new offset (rows then look newer:
        longer waits, never an excess). Off where the boot cannot be identified
        (``_boot_id``). Caller holds ``_lock`` inside a write transaction.
        """
        # One reading of both clocks for the whole transaction (_now): a step between
        # this check and a second reading would go unnoticed by the rows yet move "now"
        # (a forward one: every row would look a step older, and leave its window).
        # The monotonic one first: see _step.
        mono = time.monotonic()
        now = self._now = _wall_ms()
        self._now_mono = mono
        boot = _boot_id()
        if boot is None:
            return
        offset = now - math.floor(mono * 1000)
        known = dict(
            conn.execute(
                "SELECT name, value FROM syncfetch_meta"
                " WHERE name IN ('clock_boot', 'clock_offset')"
            ).fetchall()
        )
        step = offset - known.get("clock_offset", offset)
        if known.get("clock_boot") == boot and abs(step) <= _CLOCK_STEP_MS:
            return
        if known.get("clock_boot") == boot and step > 0:
            # Live before the step (on the old clock), so still live, step ms later.
            conn.execute(
                "UPDATE syncfetch_log SET ts = ts + ?1, exp = exp + ?1,"
                " hold = CASE WHEN hold > 0 THEN hold + ?1 ELSE 0 END WHERE exp > ?2",
                (step, now - step),
            )
            conn.execute(
                "UPDATE syncfetch_pause SET until = until + ? WHERE until > ?", (step, now - step)
            )
            conn.execute(
                "UPDATE syncfetch_queue SET exp = exp + ? WHERE exp > ?", (step, now - step)
            )
            conn.execute(
                "UPDATE syncfetch_weighted SET until = until + ? WHERE until > ?",
                (step, now - step),
            )
            conn.execute(
                "UPDATE syncfetch_mqueue SET exp = exp + ? WHERE exp > ?", (step, now - step)
            )
            log.warning(
                "syncfetch: the wall clock stepped %d ms forward; tokens in %s moved with it",
                step,
                self.name,
                extra={"syncfetch_backend": self.name},
            )
        conn.executemany(
            "INSERT OR REPLACE INTO syncfetch_meta (name, value) VALUES (?, ?)",
            [("clock_boot", boot), ("clock_offset", offset)],
        )

    # -- SharedLimiter -------------------------------------------------------------------

    def _take(self, key: str, deadline: float | None, start: float) -> Token:
        ticket: int | None = None
        try:
            while True:
                with self._locked():
                    step = self._step(key, ticket, deadline)
                    ticket = step.ticket
                    if step.row is not None:
                        self._maybe_sweep()
                        return Token(key, step.row, time.monotonic() - start)
                raise_if_late(key, step.wait_ms, deadline)
                self.sleep(step.wait_ms / 1000)
        except BaseException:
            if ticket is not None:
                self._drop_ticket(ticket)
            raise

    def _step(self, key: str, ticket: int | None, deadline: float | None) -> _Step:
        """One transaction: take a row if this waiter's turn has come, else queue up."""
        with self._transaction() as conn:
            # The transaction's reading of the clocks (_follow_clock_step). now_mono, the
            # monotonic twin of now which settle measures from, was read just before now:
            # a thread switch between the two then dates the settled row later, never
            # earlier than the truth. (Read after the INSERT, it could be late by however
            # long this thread then waits for the GIL, the row dated that much too early.)
            now, now_mono = self._now, self._now_mono
            ahead = 0
            if self.fair:
                conn.execute("DELETE FROM syncfetch_queue WHERE key = ? AND exp <= ?", (key, now))
                if (
                    ticket is not None
                    and not conn.execute(
                        "SELECT 1 FROM syncfetch_queue WHERE ticket = ?", (ticket,)
                    ).fetchone()
                ):
                    ticket = None  # presumed dead after a long stall: queue again
                ahead = conn.execute(
                    "SELECT count(*) FROM syncfetch_queue WHERE key = ? AND ticket < ?",
                    (key, ticket if ticket is not None else 2**63 - 1),
                ).fetchone()[0]
            paused, weighted = conn.execute(
                "SELECT (SELECT until FROM syncfetch_pause WHERE key = ?1),"
                " (SELECT until FROM syncfetch_weighted WHERE key = ?1)",
                (key,),
            ).fetchone()
            wait = paused - now if paused is not None else 0
            if wait <= 0:
                weighed = weighted is not None and weighted > now
                wait = self._rate_wait(conn, key, now, ahead, weighed)
            if wait <= 0:
                hold = now + self._unsettled_ms  # counts as now until settled or then
                rowid = conn.execute(
                    "INSERT INTO syncfetch_log (key, ts, exp, hold) VALUES (?, ?, ?, ?)",
                    (key, now, hold + self._horizon_ms, hold),
                ).lastrowid
                assert rowid is not None
                if ticket is not None:
                    conn.execute("DELETE FROM syncfetch_queue WHERE ticket = ?", (ticket,))
                return _Step(_Row(rowid, now, now_mono), 0, None)
            if deadline is not None and time.monotonic() + wait / 1000 > deadline:
                # The caller raises; leave the queue now.
                if ticket is not None:
                    conn.execute("DELETE FROM syncfetch_queue WHERE ticket = ?", (ticket,))
                return _Step(None, wait, None)
            if self.fair:
                exp = now + wait + TICKET_GRACE_MS
                if ticket is None:
                    ticket = conn.execute(
                        "INSERT INTO syncfetch_queue (key, exp) VALUES (?, ?)", (key, exp)
                    ).lastrowid
                else:
                    conn.execute(
                        "UPDATE syncfetch_queue SET exp = ? WHERE ticket = ?", (exp, ticket)
                    )
            return _Step(None, wait, ticket)

    def _rate_wait(
        self, conn: sqlite3.Connection, key: str, now: int, ahead: int, weighed: bool
    ) -> int:
        """Ms until every window has a free place for this waiter and the ``ahead`` before it.

        Free places come, oldest first, as rows leave the window (a window holding
        fewer than ``limit`` rows has places free now); the ``ahead`` waiters take the
        first ones. An unsettled row is dated now (``_DATE``): its place frees a window
        from now at the earliest. So with ``ahead < limit`` the waiter needs the ``limit - 1 -
        ahead``-th newest row to leave: exact. With more waiters ahead it needs places
        that their tokens free one window later: an estimate, checked again on waking.
        ``weighed``: some rows of ``key`` may weigh other than 1 (``syncfetch_weighted``).
        """
        wait = 0
        for rate in self.rates:
            rounds, nth = divmod(ahead, rate.limit)
            if weighed:
                free_at = self._free_at(conn, key, now, rate.interval, rate.limit - 1 - nth)
            else:
                row = conn.execute(
                    _NTH_AT, (now, key, now - rate.interval, rate.limit - 1 - nth)
                ).fetchone()
                free_at = row[0] + rate.interval if row is not None else now
            wait = max(wait, free_at + rounds * rate.interval - now)
        return wait

    @staticmethod
    def _free_at(conn: sqlite3.Connection, key: str, now: int, window: int, room: int) -> int:
        """When the ``window`` (ms) of ``key`` holds at most ``room`` tokens (rows
        weighing their cost): ``now``, or when the row that tips it over leaves."""
        if _WINDOW_FUNCTIONS:
            row = conn.execute(_FULL_AT, (now, key, now - window, room)).fetchone()
            return int(row[0]) + window if row is not None else now
        used = 0  # the same sum in Python, reading every row of the window
        for date, cost in conn.execute(_ROWS_IN, (now, key, now - window)):
            used += cost
            if used > room:
                return int(date) + window
        return now

    def _take_many(
        self,
        key: str,
        charges: Sequence[Charge],
        deadline: float | None,
        start: float,
        priority: int,
    ) -> Token:
        # Each look is one transaction checking every charge; nothing is held while
        # sleeping. A waiting call queues on the keys it lacks room on (fair), ranked by
        # priority, aged, then arrival (syncfetch_mqueue).
        call = _Call(random.getrandbits(62), priority)
        try:
            while True:
                with self._locked():
                    rows, wait, binding = self._step_many(charges, call, deadline)
                    if rows is not None:
                        self._maybe_sweep()
                        return Token(key, rows, time.monotonic() - start)
                raise_if_late(binding, wait, deadline)
                self.sleep(wait / 1000)
        except BaseException:
            if call.keys:
                self._leave(call)
            raise

    def _leave(self, call: _Call) -> None:
        """Take ``call`` out of the queue (best effort, briefly: its rows expire anyway)."""
        bound = BACKEND_DEADLINE.set(time.monotonic() + _CLEANUP_WAIT)
        try:
            with (
                contextlib.suppress(sqlite3.Error, OSError, OutOfTime),
                self._locked(),
                self._transaction() as conn,
            ):
                _dequeue(conn, call, call.keys)
        finally:
            BACKEND_DEADLINE.reset(bound)

    def _step_many(
        self, charges: Sequence[Charge], call: _Call, deadline: float | None
    ) -> tuple[_Rows | None, int, str]:
        """One transaction: take every charge if all have room (one row each, weighing its
        cost, held as unsettled), beside the costs of the calls queued ahead of ``call``
        on its keys; else take nothing, and queue ``call`` on the keys lacking room.
        Returns the rows, or the longest wait (ms) and the key that needs it. Caller
        holds ``_lock``."""
        with self._transaction() as conn:
            now, now_mono = self._now, self._now_mono  # as in _step
            need: dict[str, int] = {}  # a key charged twice needs room for both
            for charge in charges:
                need[charge.key] = need.get(charge.key, 0) + charge.cost
            keys = list(need)
            wait, binding = 0, charges[0].key
            marks = ", ".join("?" * len(keys))
            weighed: set[str] = set()  # keys with rows weighing other than 1
            for name, until, table in conn.execute(
                f"SELECT key, until, 'p' FROM syncfetch_pause WHERE key IN ({marks}) UNION ALL"
                f" SELECT key, until, 'w' FROM syncfetch_weighted WHERE key IN ({marks})",
                keys + keys,
            ):
                if table == "w":
                    if until > now:
                        weighed.add(name)
                elif until - now > wait:
                    wait, binding = until - now, name
            if wait > 0:
                _dequeue(conn, call, call.keys)  # paused: queued nowhere meanwhile
                return None, wait, binding
            # A newcomer ranks as if it began waiting now.
            score = call.score
            if score is None:
                score = call.priority * math.ceil(base.AGING * 1000) - now
            # The costs queued ahead of this call per key: all of them (for when to wake),
            # and those that hold it back now (see syncfetch_mqueue).
            ahead: dict[str, int] = {}
            blocking: dict[str, int] = {}
            if self.fair:
                for name, held, total in conn.execute(
                    "SELECT key, sum(CASE WHEN priority != ?4 OR exp <= ?5 THEN cost ELSE 0 END),"
                    " sum(cost) FROM syncfetch_mqueue WHERE key IN"
                    f" ({', '.join(f'?{6 + i}' for i in range(len(keys)))})"
                    " AND exp > ?1 AND call != ?2"
                    " AND (score > ?3 OR (score = ?3 AND call < ?2)) GROUP BY key",
                    (now, call.id, score, call.priority, now + TICKET_GRACE_MS, *keys),
                ):
                    blocking[name], ahead[name] = held, total
            wait, binding, lacking = self._many_wait(conn, charges, need, ahead, weighed, now)
            if (
                wait > 0
                and blocking != ahead
                and self._many_wait(conn, charges, need, blocking, weighed, now)[0] <= 0
            ):
                wait = 0  # room now beside the calls that hold this one back: taken
            if wait > 0:
                if not self.fair or (
                    deadline is not None and time.monotonic() + wait / 1000 > deadline
                ):
                    _dequeue(conn, call, call.keys)  # the caller raises
                    return None, wait, binding
                # Queued on the keys lacking room only: one with room is not held back
                # for this call while it waits for another.
                call.score = score
                exp = now + wait + TICKET_GRACE_MS
                conn.executemany(
                    "INSERT INTO syncfetch_mqueue (call, key, cost, priority, score, exp)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key, call) DO UPDATE SET"
                    " exp = excluded.exp",
                    [(call.id, name, need[name], call.priority, score, exp) for name in lacking],
                )
                _dequeue(conn, call, [name for name in call.keys if name not in lacking])
                call.keys = list(lacking)
                return None, wait, binding
            _dequeue(conn, call, call.keys)
            hold = now + self._unsettled_ms  # counts as now until settled or then
            rows: list[_Charged] = []
            for charge in charges:
                horizon = max(window for _, window in charge.windows)
                rowid = conn.execute(
                    "INSERT INTO syncfetch_log (key, ts, exp, hold, cost) VALUES (?, ?, ?, ?, ?)",
                    (charge.key, now, hold + horizon, hold, charge.cost),
                ).lastrowid
                assert rowid is not None
                rows.append(_Charged(rowid, charge.key, charge.cost, horizon))
            _weigh(conn, [(r.key, hold + r.horizon) for r in rows if r.cost != 1])
            return _Rows(rows, now, now_mono), 0, binding

    def _many_wait(
        self,
        conn: sqlite3.Connection,
        charges: Sequence[Charge],
        need: dict[str, int],
        ahead: dict[str, int],
        weighed: set[str],
        now: int,
    ) -> tuple[int, str, dict[str, int]]:
        """Ms until every window of every charge has room for its ``need`` beside the
        costs ``ahead`` of it (0: room now), the key needing the longest, and the wait of
        each key lacking room."""
        wait, binding = 0, charges[0].key
        lacking: dict[str, int] = {}
        for charge in charges:
            for limit, window in charge.windows:
                # The calls ahead take the first places; beyond a window of them, a
                # round later (an estimate, checked again on waking).
                rounds, rest = divmod(ahead.get(charge.key, 0), limit)
                room = limit - need[charge.key] - rest
                if room < 0:
                    rounds, room = rounds + 1, limit - need[charge.key]
                if charge.key in weighed:
                    free_at = self._free_at(conn, charge.key, now, window, room)
                else:  # one token a row: the cheaper query (see _rate_wait)
                    row = conn.execute(_NTH_AT, (now, charge.key, now - window, room)).fetchone()
                    free_at = row[0] + window if row is not None else now
                key_wait = free_at + rounds * window - now
                if key_wait > 0:
                    lacking[charge.key] = max(lacking.get(charge.key, 0), key_wait)
                if key_wait > wait:
                    wait, binding = key_wait, charge.key
        return wait, binding, lacking

    def _correct(self, token: Token, key: str, cost: int) -> None:
        handle: _Row | _Rows | None = token.handle
        if isinstance(handle, _Rows):
            found = [r for r in handle.rows if r.key == key]
        elif isinstance(handle, _Row) and key == token.key:
            found = [_Charged(handle.rowid, key, handle.cost, self._horizon_ms)]
        else:
            return
        if not found or found[0].cost == cost:
            return
        charged = found[0]
        date = handle.dated or handle.ts
        # Unsettled, it expires at its hold plus its window (see _step_many).
        exp = date + charged.horizon + (0 if handle.dated else self._unsettled_ms)
        with self._lock, self._transaction() as conn:
            # key and ts guard against a rowid reused after the sweep deleted the row.
            conn.execute(
                "UPDATE syncfetch_log SET cost = ? WHERE id = ? AND key = ? AND ts = ?",
                (cost, charged.rowid, key, date),
            )
            _weigh(conn, [(key, exp)])
        charged.cost = cost
        if isinstance(handle, _Row):
            handle.cost = cost

    def _pause_left_ms(self, key: str) -> int:
        """Ms left of the pause on ``key``: a plain read, no write lock."""
        row = self._read("SELECT until FROM syncfetch_pause WHERE key = ?", (key,))
        return int(row[0]) - _wall_ms() if row is not None else 0

    def _read(self, sql: str, args: tuple[object, ...] = ()) -> tuple[int, ...] | None:
        """One row of a query outside any transaction (WAL readers see the last commit)."""
        with self._locked():
            try:
                conn = self._connection()
                row: tuple[int, ...] | None = self._retry_busy(
                    lambda: conn.execute(sql, args).fetchone()
                )
            except (sqlite3.Error, OSError) as exc:
                if not isinstance(exc, RequestException):
                    self._drop()
                raise
        return row

    def _paused_for(self, key: str) -> float:
        return max(0, self._pause_left_ms(key)) / 1000

    def _drop_ticket(self, ticket: int) -> None:
        # Best effort, briefly: an abandoned ticket expires by itself.
        bound = BACKEND_DEADLINE.set(time.monotonic() + _CLEANUP_WAIT)
        try:
            with (
                contextlib.suppress(sqlite3.Error, OSError, OutOfTime),
                self._locked(),
                self._transaction() as conn,
            ):
                conn.execute("DELETE FROM syncfetch_queue WHERE ticket = ?", (ticket,))
        finally:
            BACKEND_DEADLINE.reset(bound)

    def _sent(self, token: Token) -> None:
        row: _Row = token.handle
        self._date(token, self._sent_time(token, row.ts, row.taken_at))

    def _settle(self, token: Token) -> None:
        row: _Row = token.handle
        new = self._settled_time(token, row.ts, row.taken_at)
        if row.dated is not None and new <= row.dated:
            return  # dated by its send already; earlier would only free its place sooner
        self._date(token, new)

    def _date(self, token: Token, new: int) -> None:
        """Date the row(s) of ``token`` at ``new`` (ms), settled."""
        row: _Row | _Rows = token.handle
        with self._lock, self._transaction() as conn:
            # key and ts guard against a rowid reused after the sweep deleted the row.
            # (A row moved by a clock step is not found: it counts as now until its hold.)
            if isinstance(row, _Rows):
                conn.executemany(
                    "UPDATE syncfetch_log SET ts = ?, exp = ?, hold = 0"
                    " WHERE id = ? AND key = ? AND ts = ?",
                    [(new, new + r.horizon, r.rowid, r.key, row.dated or row.ts) for r in row.rows],
                )
                _weigh(conn, [(r.key, new + r.horizon) for r in row.rows if r.cost != 1])
            else:
                conn.execute(
                    "UPDATE syncfetch_log SET ts = ?, exp = ?, hold = 0"
                    " WHERE id = ? AND key = ? AND ts = ?",
                    (new, new + self._horizon_ms, row.rowid, token.key, row.dated or row.ts),
                )
                if row.cost != 1:  # corrected (_correct)
                    _weigh(conn, [(token.key, new + self._horizon_ms)])
        row.dated = new

    def _replay(self, ages: list[tuple[str, int, int]]) -> None:
        # One row per charge: its units (same key, age and window) weigh it together.
        weights = collections.Counter(ages)
        with self._locked(), self._transaction() as conn:
            now = self._now
            rows = [
                (key, now - age, now - age + horizon, cost)
                for (key, age, horizon), cost in weights.items()
            ]
            conn.executemany(
                "INSERT INTO syncfetch_log (key, ts, exp, cost) VALUES (?, ?, ?, ?)", rows
            )
            _weigh(conn, [(key, exp) for key, _, exp, cost in rows if cost != 1])

    def _pause(self, key: str, seconds: float) -> None:
        with self._lock, self._transaction() as conn:
            conn.execute(
                "INSERT INTO syncfetch_pause (key, until) VALUES (?, ?) ON CONFLICT (key)"
                " DO UPDATE SET until = max(until, excluded.until)",
                (key, _wall_ms() + math.ceil(seconds * 1000)),
            )

    def _maybe_sweep(self) -> None:
        """Sweep if this process's timer says one may be due; a failure is only logged
        (the token is already taken). Caller holds ``_lock``."""
        if time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + self.sweep_every
        try:
            self._sweep()
        except (sqlite3.Error, OSError, OutOfTime) as exc:
            log.debug("syncfetch: sweep of %s failed: %s", self.name, exc)

    def _sweep(self) -> None:
        """Delete expired rows, pauses and tickets, unless another process did so less
        than ``sweep_every`` ago. Caller holds ``_lock``."""
        with self._transaction() as conn:
            now = self._now
            row = conn.execute(
                "SELECT value FROM syncfetch_meta WHERE name = 'next_sweep'"
            ).fetchone()
            if row is not None and row[0] > now:
                return
            conn.execute(
                "INSERT OR REPLACE INTO syncfetch_meta (name, value) VALUES ('next_sweep', ?)",
                (now + math.ceil(self.sweep_every * 1000),),
            )
            conn.execute("DELETE FROM syncfetch_log WHERE exp <= ?", (now,))
            conn.execute("DELETE FROM syncfetch_pause WHERE until <= ?", (now,))
            conn.execute("DELETE FROM syncfetch_queue WHERE exp <= ?", (now,))
            conn.execute("DELETE FROM syncfetch_weighted WHERE until <= ?", (now,))
            conn.execute("DELETE FROM syncfetch_mqueue WHERE exp <= ?", (now,))
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
        if free >= _VACUUM_MIN_FREE_PAGES and free * 4 > pages:
            # Each step of this pragma frees one page, and Connection.execute steps a
            # statement without result columns once (measured: 1 page of 230 freed);
            # executescript steps it to the end (and commits any open transaction
            # first, hence its own).
            try:
                self._retry_busy(
                    lambda: conn.executescript(
                        "BEGIN IMMEDIATE; PRAGMA incremental_vacuum; COMMIT;"
                    )
                )
            except (sqlite3.Error, OSError):
                self._drop()
                raise

    def row_count(self) -> int:
        """Rows in the token log (for tests and monitoring)."""
        row = self._read("SELECT count(*) FROM syncfetch_log")
        return int(row[0]) if row is not None else 0

    def sweep(self) -> None:
        """Delete expired rows now (normally done every ``sweep_every`` by acquire)."""
        with self._lock:
            with self._transaction() as conn:
                conn.execute("DELETE FROM syncfetch_meta WHERE name = 'next_sweep'")
            self._sweep()

    def _fork_lock(self) -> threading.Lock | None:
        return self._lock

    def _reset_after_fork(self) -> None:
        # The parent may have held _lock at fork time, and its connection is not ours.
        self._lock = threading.Lock()
        self._abandon()

    def _close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                self._drop()
            else:
                self._abandon()

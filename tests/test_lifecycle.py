"""``close()`` against every kind of waiter: each ends with SessionClosed, nothing is sent.

Each test starts calls that must wait (for a slot, a token, a pause, a backoff, the
adaptive pace, a shared backend), closes the session while they wait, and checks that
every waiter raised :class:`SessionClosed` promptly and that the server received
nothing after ``close()`` returned.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import requests

import syncfetch
from syncfetch import SessionClosed
from tests._server import ScriptedServer, Step

PROMPT = 2.0  # seconds a waiter may take to notice close() (generous: busy 2-core box)


class Calls:
    """Calls run on their own threads; outcomes collected for the checks."""

    def __init__(self) -> None:
        self.outcomes: list[object] = []
        self.ended: list[float] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self, n: int, fn: Callable[[], Any]) -> None:
        def run() -> None:
            try:
                outcome: object = fn()
            except BaseException as exc:
                outcome = exc
            with self._lock:
                self.outcomes.append(outcome)
                self.ended.append(time.monotonic())

        for _ in range(n):
            t = threading.Thread(target=run, daemon=True)
            t.start()
            self._threads.append(t)

    def join(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "a call hung after close()"

    def closed(self) -> list[BaseException]:
        return [o for o in self.outcomes if isinstance(o, SessionClosed)]


def close_while_waiting(
    session: syncfetch.Session,
    server: ScriptedServer,
    calls: Calls,
    *,
    waiters: int,
    settle: float = 0.5,
    finish: float = 3.0,
) -> None:
    """Close ``session`` once its calls wait; check the waiters end and nothing more is sent."""
    time.sleep(settle)  # let every call reach its wait
    closed_at = time.monotonic()
    session.close()
    seen_at_close = server.count()
    # Every waiter ends promptly (the one on the wire, if any, ends with its response).
    deadline = time.monotonic() + PROMPT
    while len(calls.closed()) < waiters and time.monotonic() < deadline:
        time.sleep(0.01)
    closed = calls.closed()
    assert len(closed) == waiters, calls.outcomes
    with calls._lock:
        late = [
            t - closed_at for t, o in zip(calls.ended, calls.outcomes, strict=True) if o in closed
        ]
    assert max(late) < PROMPT
    calls.join(finish)
    time.sleep(0.2)
    assert server.count() == seen_at_close, "a request was sent after close() returned"


def test_slot_waiters_end_on_close(server: ScriptedServer) -> None:
    # One call holds the only slot for 1.5 s; four wait for it.
    server.script("/slow", Step(delay=1.5))
    s = syncfetch.Session(max_concurrency=1, retry=0)
    calls = Calls()
    calls.start(1, lambda: s.get(server.url_for("/slow")))
    time.sleep(0.2)
    calls.start(4, lambda: s.get(server.url_for("/slow")))
    close_while_waiting(s, server, calls, waiters=4)
    assert server.count() == 1
    assert [o.status_code for o in calls.outcomes if isinstance(o, requests.Response)] == [200]


def test_token_waiters_end_on_close(server: ScriptedServer) -> None:
    # 32 threads at 1/second: 10 wait for a token holding a slot, 21 wait for a slot.
    s = syncfetch.Session("1/second", retry=0)
    calls = Calls()
    calls.start(32, lambda: s.get(server.url_for("/t")))
    close_while_waiting(s, server, calls, waiters=31)
    assert server.count() == 1


def test_pause_waiters_end_on_close(server: ScriptedServer) -> None:
    syncfetch.set_testing(False)  # the pause is a real wait
    server.script("/p", Step(status=429, headers={"Retry-After": "5"}), Step())
    s = syncfetch.Session(retry=0)
    assert s.get(server.url_for("/p")).status_code == 429  # pauses the host for 5 s
    calls = Calls()
    calls.start(3, lambda: s.get(server.url_for("/p")))
    close_while_waiting(s, server, calls, waiters=3)
    assert server.count() == 1


def test_backoff_waiters_end_on_close(server: ScriptedServer) -> None:
    syncfetch.set_testing(False)  # the backoff is a real wait
    server.script("/b", Step(status=503))
    policy = syncfetch.RetryPolicy(retries=3, backoff_base=5.0, backoff_max=5.0, jitter=False)
    s = syncfetch.Session(retry=policy)
    calls = Calls()
    calls.start(3, lambda: s.get(server.url_for("/b")))
    close_while_waiting(s, server, calls, waiters=3)
    assert server.count() == 3


def test_adaptive_pacing_waiters_end_on_close(server: ScriptedServer) -> None:
    s = syncfetch.Session(adaptive=syncfetch.Adaptive(probe=0.5, floor=0.5), retry=0)
    calls = Calls()
    calls.start(4, lambda: s.get(server.url_for("/a")))
    close_while_waiting(s, server, calls, waiters=3)
    assert server.count() == 1


def test_sqlite_token_waiters_end_on_close(server: ScriptedServer, tmp_path: Path) -> None:
    s = syncfetch.Session("1/second", store=f"sqlite:///{tmp_path / 'l.db'}", retry=0)
    calls = Calls()
    calls.start(12, lambda: s.get(server.url_for("/t")))
    close_while_waiting(s, server, calls, waiters=11)
    assert server.count() == 1


def test_sqlite_busy_waiters_end_on_close(server: ScriptedServer, tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    s = syncfetch.Session("100/second", store=f"sqlite:///{path}", retry=0)
    s.get(server.url_for("/t"))  # creates the file and its tables
    # Another process's write lock, held for longer than the busy timeout would wait.
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        calls = Calls()
        calls.start(4, lambda: s.get(server.url_for("/t")))
        close_while_waiting(s, server, calls, waiters=4)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert server.count() == 1


def test_redis_token_waiters_end_on_close(server: ScriptedServer) -> None:
    from tests._redis import RedisServer

    with RedisServer() as redis_server:
        s = syncfetch.Session("1/second", store=redis_server.url, retry=0)
        calls = Calls()
        calls.start(12, lambda: s.get(server.url_for("/t")))
        close_while_waiting(s, server, calls, waiters=11)
    assert server.count() == 1


# -- submit ----------------------------------------------------------------------------


def _submitted(s: syncfetch.Session, url: str, n: int, calls: Calls) -> Iterator[Future[Any]]:
    futures = [s.submit("GET", url) for _ in range(n)]

    def watch(f: Future[Any]) -> None:
        try:
            outcome: object = f.result()
        except BaseException as exc:
            outcome = exc
        with calls._lock:
            calls.outcomes.append(outcome)
            calls.ended.append(time.monotonic())

    for f in futures:
        f.add_done_callback(watch)
    return iter(futures)


def test_submitted_token_waiters_end_on_close(server: ScriptedServer) -> None:
    s = syncfetch.Session("1/second", max_concurrency=4, retry=0)
    calls = Calls()
    futures = list(_submitted(s, server.url_for("/t"), 4, calls))
    close_while_waiting(s, server, calls, waiters=3)
    assert server.count() == 1
    assert all(f.done() for f in futures)


def test_submitted_slot_waiters_end_on_close(server: ScriptedServer) -> None:
    server.script("/slow", Step(delay=1.5))
    s = syncfetch.Session(max_concurrency=1, max_workers=4, retry=0)
    calls = Calls()
    futures = list(_submitted(s, server.url_for("/slow"), 4, calls))
    close_while_waiting(s, server, calls, waiters=3)
    assert server.count() == 1
    assert all(f.done() for f in futures)


def test_session_works_after_close(server: ScriptedServer) -> None:
    s = syncfetch.Session("1/second", retry=0)
    calls = Calls()
    calls.start(3, lambda: s.get(server.url_for("/t")))
    close_while_waiting(s, server, calls, waiters=2)
    # Calls started after close() are served (the token bucket still holds the limit).
    assert s.get(server.url_for("/t")).status_code == 200
    s.close()


@pytest.mark.parametrize("kind", ["slot", "token"])
def test_close_from_another_thread_is_idempotent(server: ScriptedServer, kind: str) -> None:
    s = syncfetch.Session("1/second" if kind == "token" else None, max_concurrency=1, retry=0)
    server.script("/slow", Step(delay=1.0))
    calls = Calls()
    calls.start(3, lambda: s.get(server.url_for("/slow")))
    time.sleep(0.3)
    closers = [threading.Thread(target=s.close) for _ in range(3)]
    for t in closers:
        t.start()
    for t in closers:
        t.join(5)
    calls.join(5)
    assert len(calls.closed()) == 2
    assert server.count() == 1


def test_hung_redis_waiters_end_on_close(server: ScriptedServer) -> None:
    from tests.test_faults import HungServer

    pytest.importorskip("redis")
    hung = HungServer()
    try:
        s = syncfetch.Session("5/s", store=f"redis://127.0.0.1:{hung.port}/0", retry=0)
        calls = Calls()
        calls.start(3, lambda: s.get(server.url_for("/t")))
        # Each waits on Redis for up to 2 s (its socket timeout): close well before.
        time.sleep(0.3)
        start = time.monotonic()
        s.close()
        calls.join(1.5)
        assert time.monotonic() - start < 1.5
        assert len(calls.closed()) == 3, calls.outcomes
        assert server.count() == 0
    finally:
        hung.close()

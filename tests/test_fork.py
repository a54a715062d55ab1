"""A Session used before ``os.fork()`` works in the child, whatever the parent was doing.

The child runs under ``warnings.simplefilter("error")``, reports through a pipe, and
leaves with ``os._exit``; the parent waits with a timeout and kills a child that hangs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import syncfetch
from tests._redis import RedisServer, require_redis
from tests._server import ScriptedServer

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

CHILD_TIMEOUT = 20.0


@pytest.fixture(params=["memory", "sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "memory":
        yield "memory"
    elif request.param == "sqlite":
        yield "sqlite:///" + str(tmp_path / "limits.db")
    else:
        require_redis()
        with RedisServer() as srv:
            yield srv.url


def run_in_child(body: Callable[[], None]) -> tuple[int, str, float]:
    """Fork; run ``body`` in the child with warnings as errors.

    :returns: the child's exit code (-1 if it had to be killed), its traceback if it
        failed, and how long it took.
    """
    read_fd, write_fd = os.pipe()
    start = time.monotonic()
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a multi-threaded process may deadlock: the
        # very thing under test.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.close(read_fd)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                body()
            code = 0
        except BaseException:
            with contextlib.suppress(BaseException):
                os.write(write_fd, traceback.format_exc().encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    code = -1
    while time.monotonic() - start < CHILD_TIMEOUT:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            break
        time.sleep(0.02)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    took = time.monotonic() - start
    with os.fdopen(read_fd, "rb") as pipe:
        report = pipe.read().decode(errors="replace") or f"child hung; killed after {took:.0f} s"
    return code, report, took


def use(session: syncfetch.Session, url: str) -> None:
    """Direct calls and a batch through the executor; every one must succeed."""
    assert session.get(url).status_code == 200
    results = list(session.map([url] * 6))
    assert [r.error for r in results] == [None] * 6
    assert [r.response.status_code for r in results if r.response] == [200] * 6


def test_session_works_in_forked_child(server: ScriptedServer, backend: str) -> None:
    url = server.url_for("/item")
    with syncfetch.Session("100/s", store=backend, max_concurrency=4) as session:
        use(session, url)  # the pool, the executor and the limiter's connection are live
        code, report, took = run_in_child(lambda: use(session, url))
        assert code == 0, report
        assert took < 10
        use(session, url)  # the parent is unaffected by the child
    assert server.count(status=429) == 0
    assert server.count() == 3 * 7


def test_fork_while_other_threads_are_inside_the_limiter(
    server: ScriptedServer, backend: str
) -> None:
    """One thread waits for a token, another holds the limiter's lock, then fork."""
    url = server.url_for("/busy")
    other = server.url.replace("127.0.0.1", "localhost") + "/child"  # another bucket
    with syncfetch.Session("5/s", store=backend, max_concurrency=4) as session:
        for _ in range(5):
            session.get(url)  # the bucket for url is full for about a second
        waiter = threading.Thread(target=session.get, args=(url,))
        waiter.start()
        limiter: Any = session._pipeline.limiter
        lock = getattr(limiter, "_lock", None) or limiter._state_lock
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            with lock:
                held.set()
                release.wait(10)

        holder = threading.Thread(target=hold)
        holder.start()
        held.wait(5)
        time.sleep(0.05)  # the waiter is asleep inside acquire by now
        try:
            code, report, took = run_in_child(lambda: use(session, other))
        finally:
            release.set()
            holder.join()
            waiter.join()
        assert code == 0, report
        assert took < 10
    assert server.count(status=429) == 0


def test_executor_used_before_fork_runs_map_in_child(server: ScriptedServer) -> None:
    url = server.url_for("/m")
    with syncfetch.Session(max_concurrency=3) as session:
        futures = [session.submit("GET", url) for _ in range(5)]
        assert [f.result().status_code for f in futures] == [200] * 5

        def child() -> None:
            results = list(session.map([url] * 5, ordered=False))
            assert sorted(r.response.status_code for r in results if r.response) == [200] * 5

        code, report, _ = run_in_child(child)
        assert code == 0, report


def test_event_hooks_work_in_forked_child(server: ScriptedServer) -> None:
    kinds: list[str] = []
    session = syncfetch.Session(on_event=lambda e: kinds.append(e.kind))
    session.get(server.url_for("/a"))
    assert "call_end" in kinds
    # A hook being added while the fork happens leaves the hub's lock held in the child.
    session._pipeline.hub._lock.acquire()
    try:

        def body() -> None:
            kinds.clear()
            session.add_event_hook(lambda e: None)
            session.get(server.url_for("/b"))
            assert kinds.count("call_end") == 1, kinds

        code, error, _ = run_in_child(body)
    finally:
        session._pipeline.hub._lock.release()
    assert code == 0, error
    session.close()

"""Session settings: checked at the boundary, assignable like requests attributes, in repr."""

from __future__ import annotations

import inspect
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

import syncfetch
from syncfetch._session import _store_text
from syncfetch._settings import session_kwargs
from syncfetch._stores.sqlite import SQLiteLimiter
from tests._server import ScriptedServer, Step

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({"limits": 10}, TypeError, "not 10"),
        ({"limits": 2.5}, TypeError, "not 2.5"),
        ({"per_host": "no"}, TypeError, "per_host must be True or False, not 'no'"),
        ({"per_host": 1}, TypeError, "per_host"),
        ({"rate_limit_headers": "off"}, TypeError, "'off'"),
        ({"timeout": NAN}, ValueError, "nan"),
        ({"timeout": INF}, ValueError, "inf"),
        ({"timeout": (1, NAN)}, ValueError, "(1, nan)"),
        ({"timeout": True}, ValueError, "True"),
        ({"max_wait": NAN}, ValueError, "max_wait"),
        ({"max_wait": INF}, ValueError, "None (wait as long as needed)"),
        ({"max_concurrency": True}, ValueError, "True"),
        ({"max_workers": 0}, ValueError, "max_workers"),
        ({"on_backend_error": "ignore"}, ValueError, "'ignore'"),
        ({"adaptive": "yes"}, ValueError, "'yes'"),
        ({"store": "postgres://db"}, ValueError, "postgres://db"),
    ],
)
def test_bad_arguments_are_refused_naming_them(
    kwargs: dict[str, Any], error: type[Exception], needle: str
) -> None:
    with pytest.raises(error) as info:
        syncfetch.Session(**kwargs)
    assert needle in str(info.value)


def test_the_old_backend_argument_is_refused_naming_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    with pytest.raises(TypeError, match=r"now called store=") as info:
        syncfetch.Session("1/s", backend=url)  # type: ignore[call-arg]
    assert url in str(info.value)
    with pytest.raises(TypeError, match=r"now called store=") as info:
        syncfetch.Session(backend="redis://:s3cret@cache:6379/0")  # type: ignore[call-arg]
    assert "s3cret" not in str(info.value)
    assert not (tmp_path / "l.db").exists()  # refused before anything was built
    with pytest.raises(TypeError, match="unexpected keyword argument 'limit'"):
        syncfetch.Session(limit="1/s")  # type: ignore[call-arg]
    assert "backend" not in inspect.signature(syncfetch.Session).parameters
    with syncfetch.Session(store=url) as s:
        with pytest.raises(AttributeError, match="backend is now called store"):
            s.backend = "memory"
        assert "backend" not in vars(s)
    with pytest.raises(ValueError, match=r"'backend' \(now called 'store'\)"):
        session_kwargs({"backend": url})


def test_a_session_pickled_with_backend_comes_back_with_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    with syncfetch.Session("5/s", store=url) as s:
        state = s.__getstate__()
    state["backend"] = state.pop("store")  # as 0.1.0 pickled it
    copy = syncfetch.Session.__new__(syncfetch.Session)
    copy.__setstate__(state)
    with copy:
        assert copy.store == url
        assert isinstance(copy._pipeline.limiter, SQLiteLimiter)


def test_a_missing_sqlite_directory_is_refused_at_construction(tmp_path: Path) -> None:
    missing = tmp_path / "missing" / "limits.db"
    with pytest.raises(ValueError, match="does not exist") as info:
        syncfetch.Session(store=f"sqlite:///{missing}")
    assert str(missing.parent) in str(info.value)
    with pytest.raises(ValueError, match="database file"):
        syncfetch.Session(store=f"sqlite:///{tmp_path}")
    syncfetch.Session(store=f"sqlite:///{tmp_path / 'ok.db'}").close()


def test_assigned_limits_take_effect(server: ScriptedServer) -> None:
    url = server.url_for("/x")
    with syncfetch.Session("1/second", max_wait=0) as s:
        s.get(url)
        with pytest.raises(syncfetch.RateLimitExceeded):
            s.get(url)
        s.limits = []
        assert s.limits == []
        assert [s.get(url).status_code for _ in range(5)] == [200] * 5


def test_new_limits_keep_the_window_already_used(server: ScriptedServer) -> None:
    url = server.url_for("/x")
    with syncfetch.Session("2/second", max_wait=0) as s:
        s.get(url)
        s.get(url)
        s.limits = "3/second"
        s.get(url)  # the third of the same window
        with pytest.raises(syncfetch.RateLimitExceeded):
            s.get(url)


def test_assigned_max_wait_retry_and_timeout_take_effect(server: ScriptedServer) -> None:
    url = server.url_for("/x")
    with syncfetch.Session("1/second") as s:
        s.get(url)
        s.max_wait = 0
        with pytest.raises(syncfetch.RateLimitExceeded):
            s.get(url)
    server.script("/flaky", Step(status=503), Step())
    with syncfetch.Session() as s:
        s.retry = 0
        assert s.retry == syncfetch.RetryPolicy(retries=0)
        assert s.get(server.url_for("/flaky")).status_code == 503
        s.retry = 2
        assert s.get(server.url_for("/flaky")).status_code == 200
        server.script("/slow", Step(delay=2))
        s.timeout = 0.2
        with pytest.raises(requests.ReadTimeout):
            s.get(server.url_for("/slow"))


def test_a_bad_assignment_is_refused_and_changes_nothing() -> None:
    with syncfetch.Session("5/second") as s:
        pipeline = s._pipeline
        with pytest.raises(TypeError, match="not 10"):
            s.limits = 10  # type: ignore[assignment]
        with pytest.raises(ValueError, match="nan"):
            s.timeout = NAN
        with pytest.raises(TypeError, match="per_host"):
            s.per_host = "no"  # type: ignore[assignment]
        assert [r.limit for r in s.limits] == [5]
        assert s.timeout == (3.05, 30.0)
        assert s._pipeline is pipeline
        with pytest.raises(AttributeError, match="assign a value"):
            del s.limits


def test_fixed_settings_apply_before_the_first_call_only(
    server: ScriptedServer, tmp_path: Path
) -> None:
    with syncfetch.Session("5/second") as s:
        s.store = f"sqlite:///{tmp_path / 'limits.db'}"
        s.max_concurrency = 3
        s.per_host = False
        assert isinstance(s._pipeline.limiter, SQLiteLimiter)
        assert s._pipeline.slots.size == 3 and s.max_workers == 3
        assert s.adapters["http://"]._pool_maxsize == 3  # type: ignore[attr-defined]
        assert s.get(server.url_for("/x")).status_code == 200
        with pytest.raises(AttributeError, match=r"create a new syncfetch.Session\(store=") as e:
            s.store = "memory"
        assert "sent requests" in str(e.value)
        with pytest.raises(AttributeError, match="max_concurrency"):
            s.max_concurrency = 8
        assert s.max_concurrency == 3


def test_requests_attributes_still_behave_as_in_requests(server: ScriptedServer) -> None:
    with syncfetch.Session() as s:
        s.headers["X-Team"] = "blue"
        s.auth = ("user", "pass")
        s.max_redirects = 3
        s.params = {"page": "2"}
        s.get(server.url_for("/x"))
    record = server.records[-1]
    assert record.headers["X-Team"] == "blue" and "Authorization" in record.headers
    assert record.path.endswith("page=2")


def test_assigned_settings_survive_pickling(server: ScriptedServer) -> None:
    with syncfetch.Session("7/second") as s:
        s.retry = 1
        s.max_wait = 2.0
        s.timeout = 4.0
        copy = pickle.loads(pickle.dumps(s))
    with copy:
        assert copy.retry.retries == 1 and copy.max_wait == 2.0 and copy.timeout == 4.0
        assert copy._pipeline.policy.retries == 1 and copy._pipeline.max_wait == 2.0
        copy.limits = "9/second"
        assert copy.get(server.url_for("/x")).status_code == 200


@pytest.mark.slow
def test_assignments_while_other_threads_send(server: ScriptedServer) -> None:
    server.script("/x", Step(status=503), Step(), Step(status=503), Step())
    url = server.url_for("/x")
    stop = threading.Event()
    errors: list[BaseException] = []
    with syncfetch.Session("20/second", max_concurrency=4, retry=1) as s:

        def send() -> None:
            while not stop.is_set():
                try:
                    s.get(url)
                except Exception as exc:  # any failure is the test's failure
                    errors.append(exc)

        threads = [threading.Thread(target=send) for _ in range(6)]
        for t in threads:
            t.start()
        end = time.monotonic() + 2.5
        i = 0
        while time.monotonic() < end:
            i += 1
            s.limits = "10/second" if i % 2 else "20/second"
            s.retry = i % 3
            s.max_wait = None if i % 2 else 30.0
            s.rate_limit_headers = bool(i % 2)
            time.sleep(0.01)
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    # The limiter changed in place, keeping its window: never a burst above the limit.
    assert server.max_in_window(1.0) <= 20
    assert server.count() > 20


def test_close_ends_waits_after_an_assignment(server: ScriptedServer) -> None:
    url = server.url_for("/x")
    with syncfetch.Session("1/minute") as s:
        s.get(url)
        s.retry = 0
        s.limits = "1/minute"
        outcome: list[BaseException] = []

        def wait_for_token() -> None:
            try:
                s.get(url)
            except BaseException as exc:
                outcome.append(exc)

        t = threading.Thread(target=wait_for_token)
        t.start()
        time.sleep(0.2)
        s.close()
        t.join(5)
        assert not t.is_alive() and isinstance(outcome[0], syncfetch.SessionClosed)


def test_repr_shows_the_settings_and_no_secret(tmp_path: Path) -> None:
    with syncfetch.Session(["10/second", "500/minute"], max_concurrency=4, max_wait=2) as s:
        text = repr(s)
    assert text.startswith("<syncfetch.Session limits=['10/1s', '500/60s']")
    for part in ("max_concurrency=4", "retry=RetryPolicy(", "max_wait=2.0", "store='memory'"):
        assert part in text
    assert _store_text("redis://:s3cret@cache:6379/0") == "'redis://:***@cache:6379/0'"
    assert _store_text("rediss://app:s3cret@cache/1") == "'rediss://app:***@cache/1'"
    assert _store_text("unix:///run/redis.sock?db=0&password=s3cret") == (
        "'unix:///run/redis.sock?db=***&password=***'"
    )
    assert _store_text(object()) == "<builtins.object>"


def test_assigned_limits_on_a_shared_backend(server: ScriptedServer, tmp_path: Path) -> None:
    url = server.url_for("/x")
    with syncfetch.Session("1/second", max_wait=0, store=f"sqlite:///{tmp_path / 'l.db'}") as s:
        s.get(url)
        old = s._pipeline.limiter
        assert isinstance(old, SQLiteLimiter)
        with pytest.raises(syncfetch.RateLimitExceeded):
            s.get(url)
        s.limits = "3/second"
        assert s._pipeline.limiter is not old
        # The window lives in the file: the call already sent still counts.
        s.get(url)
        s.get(url)
        with pytest.raises(syncfetch.RateLimitExceeded):
            s.get(url)
        assert old._conn is None  # closed once no call used the old settings


def test_fixed_settings_are_refused_while_the_first_call_is_in_flight(
    server: ScriptedServer,
) -> None:
    server.script("/slow", Step(delay=1.0))
    with syncfetch.Session() as s:
        t = threading.Thread(target=s.get, args=(server.url_for("/slow"),))
        t.start()
        try:
            deadline = time.monotonic() + 5
            while server.in_flight == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            with pytest.raises(AttributeError, match="per_host"):
                s.per_host = False
        finally:
            t.join(5)

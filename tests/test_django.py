"""syncfetch.django: a lazy per-process session from settings, the 503 middleware, gunicorn."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any

import django
import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.http import HttpResponse
from django.test import Client, RequestFactory

import syncfetch
import syncfetch._settings
import syncfetch.django
from syncfetch import BackendUnavailable, RateLimitExceeded
from syncfetch.django import RateLimitExceededMiddleware, get_session
from tests._gunicorn import (
    LIMITS_ENV,
    MAX_WAIT_ENV,
    ROOT,
    UPSTREAM_ENV,
    check_load_outcome,
    hammer,
    run_gunicorn,
)
from tests._server import ScriptedServer

# pytest-django sets Django up from DJANGO_SETTINGS_MODULE in pyproject before any test
# module is imported; this fallback (a no-op then) lets the file run without that too.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django_settings")
django.setup()

# gunicorn load test: 2 worker processes, each with its own in-memory limiter at half
# the upstream's limit, so that together they can never exceed it.
UPSTREAM_LIMIT = 20
WORKERS = 2


@pytest.fixture(autouse=True)
def _fresh_session(settings: Any) -> Any:
    """Each test starts without a session (changing the setting drops it) and ends closed."""
    settings.SYNCFETCH = {"max_wait": 0.5}
    yield settings
    syncfetch.django._forget_session()


def test_get_session_builds_from_settings(settings: Any):
    settings.SYNCFETCH = {"limits": "5/second", "max_wait": 1.5, "max_concurrency": 3}
    session = get_session()
    assert isinstance(session, syncfetch.Session)
    assert (session.max_wait, session.max_concurrency) == (1.5, 3)
    assert get_session() is session


def test_missing_setting_means_session_defaults(settings: Any):
    del settings.SYNCFETCH
    session = get_session()
    assert (session.limits, session.max_wait, session.max_concurrency) == ([], None, 10)


def test_one_session_across_threads(monkeypatch: pytest.MonkeyPatch):
    """Sixteen threads released at once all get the same, single session."""
    built: list[syncfetch.Session] = []
    real = syncfetch.django.session_from_settings

    def slow_build(*args: Any, **kwargs: Any) -> syncfetch.Session:
        time.sleep(0.05)  # widen the window in which a second build could start
        session = real(*args, **kwargs)
        built.append(session)
        return session

    got: list[syncfetch.Session] = []
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        got.append(get_session())

    monkeypatch.setattr(syncfetch.django, "session_from_settings", slow_build)
    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(built) == 1
    assert len(got) == 16 and all(s is built[0] for s in got)


def test_changing_the_setting_rebuilds_and_closes_the_old_session(
    settings: Any, monkeypatch: pytest.MonkeyPatch
):
    first = get_session()
    closed: list[bool] = []
    monkeypatch.setattr(first, "close", lambda: closed.append(True))
    settings.SYNCFETCH = {"max_wait": 0.25}
    second = get_session()
    assert second is not first and second.max_wait == 0.25
    assert closed == [True]


def test_unknown_setting_keys_raise_naming_every_one(settings: Any):
    settings.SYNCFETCH = {"limit": "5/second", "max_wiat": 1, "per_host": True}
    with pytest.raises(ValueError, match=r"settings\.SYNCFETCH has unknown keys") as info:
        get_session()
    assert "'limit' (did you mean 'limits'?)" in str(info.value)
    assert "'max_wiat' (did you mean 'max_wait'?)" in str(info.value)
    settings.SYNCFETCH = {"per_host": True}  # fixed: the next call builds
    assert get_session().per_host is True


def test_setting_must_be_a_mapping(settings: Any):
    settings.SYNCFETCH = ["10/second"]
    with pytest.raises(TypeError, match="mapping"):
        get_session()


def test_session_is_closed_at_exit(settings: Any, monkeypatch: pytest.MonkeyPatch):
    registered: list[tuple[Any, tuple[Any, ...]]] = []
    monkeypatch.setattr(
        "syncfetch._settings.atexit.register", lambda fn, *args: registered.append((fn, args))
    )
    session = get_session()
    get_session()
    assert len(registered) == 1  # once per session, not per call
    closed: list[bool] = []
    monkeypatch.setattr(session, "close", lambda: closed.append(True))
    fn, args = registered[0]
    fn(*args)
    assert closed == [True]


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [("1.2", "2"), ("0.004", "1"), ("3", "3"), (None, "1")],
)
def test_middleware_turns_rate_limit_exceeded_into_503(retry_after: str | None, header: str):
    query = {} if retry_after is None else {"retry_after": retry_after}
    resp = Client().get("/rate-limited", query)
    assert resp.status_code == 503
    assert resp["Retry-After"] == header
    assert resp.json() == {
        "error": "upstream_rate_limited",
        "detail": "An upstream API is at its rate limit; try again later.",
        "retry_after": int(header),
    }
    assert b"upstream.test" not in resp.content  # internal host not leaked


def test_middleware_leaves_other_exceptions_and_responses_alone():
    middleware = RateLimitExceededMiddleware(lambda request: "passed through")
    request = RequestFactory().get("/")
    assert middleware(request) == "passed through"
    assert middleware.process_exception(request, ValueError("boom")) is None
    with pytest.raises(ValueError, match="boom"):
        Client(raise_request_exception=True).get("/boom")


def test_real_limit_in_process(settings: Any, server: ScriptedServer):
    """A view against the scripted upstream: within the limit, then a real 503."""
    server.limit([(4, 1.0)])
    settings.UPSTREAM_URL = server.url
    settings.SYNCFETCH = {"limits": "4/second", "max_wait": 0}  # the 5th call fails at once
    client = Client()
    replies = [client.get(f"/proxy/{i}") for i in range(5)]
    assert [r.status_code for r in replies] == [200, 200, 200, 200, 503]
    # The limiter's estimate (about 1 s, plus its 2 ms margin) rounded up.
    assert replies[-1]["Retry-After"] in ("1", "2")
    assert server.count() == 4  # the 503 sent nothing upstream
    assert server.count(status=429) == 0


@pytest.mark.slow
def test_gunicorn_gthread_keeps_upstream_within_its_limit(
    strict_server: ScriptedServer, tmp_path: Any
):
    strict_server.limit([(UPSTREAM_LIMIT, 1.0)])
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.django_settings",
        UPSTREAM_ENV: strict_server.url,
        LIMITS_ENV: f"{UPSTREAM_LIMIT // WORKERS}/second",
        # Below the wait of the last of a worker's 8 threads in line at 10/s (up to about
        # 0.8 s, 1 s at a window's edge): some calls are shed. (At 1.0 s the line served
        # every call in time: none was shed.)
        MAX_WAIT_ENV: "0.5",
    }
    # No --preload: each worker imports Django itself and builds its session lazily.
    with run_gunicorn(
        "django.core.wsgi:get_wsgi_application()",
        log_path=tmp_path / "gunicorn.log",
        env=env,
        workers=WORKERS,
        threads=8,
    ) as gunicorn:
        replies = hammer(gunicorn.url, total=200, threads=32)
    log = gunicorn.log()

    assert len(replies) == 200
    # Both worker processes served, each within its own half of the limit.
    check_load_outcome(
        replies,
        strict_server,
        log,
        workers=WORKERS,
        limit=UPSTREAM_LIMIT,
        min_ok=3 * UPSTREAM_LIMIT,
        require_shed=True,
    )


@pytest.mark.slow
def test_example_project_runs_with_one_command():
    proc = subprocess.run(
        [sys.executable, "examples/django_project/manage.py", "fetch_batch"],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "60 fetched, 0 failed" in proc.stdout, proc.stdout
    assert "upstream answered 429: 0 times" in proc.stderr, proc.stderr


@pytest.fixture
def outages(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fresh outage record, so that each test sees the first failure of an outage."""
    monkeypatch.setattr(syncfetch._settings.backend_outages, "_last", None)
    return syncfetch._settings.backend_outages


def test_backend_unavailable_becomes_503_logged_once_per_outage(
    outages: Any, caplog: pytest.LogCaptureFixture
):
    middleware = RateLimitExceededMiddleware(lambda request: HttpResponse("ok"))
    request = RequestFactory().get("/")
    exc = BackendUnavailable("redis://cache:6379/0 is unreachable")
    with caplog.at_level(logging.DEBUG, logger="syncfetch"):
        replies = [middleware.process_exception(request, exc) for _ in range(5)]
    assert [(r.status_code, r["Retry-After"]) for r in replies] == [(503, "1")] * 5
    assert json.loads(replies[0].content)["error"] == "upstream_limiter_unavailable"
    assert b"cache" not in replies[0].content  # the backend's address is not leaked
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "once per outage" in warnings[0].getMessage()


@pytest.mark.parametrize(
    ("retry_after", "header"), [(float("inf"), "86400"), (1e30, "86400"), (float("nan"), "1")]
)
def test_retry_after_is_clamped(retry_after: float, header: str):
    resp = syncfetch.django.rate_limited_response(
        RateLimitExceeded("no token", key="k", retry_after=retry_after)
    )
    assert (resp.status_code, resp["Retry-After"]) == (503, header)


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ({"limts": "5/second"}, "did you mean 'limits'"),
        ({"per_host": "no"}, "per_host must be True or False"),
        ({"timeout": float("nan")}, "timeout"),
        ({"store": "sqlite:////no/such/dir/limits.db"}, "'/no/such/dir' does not exist"),
        ({"retry": {"retries": -1}}, "retries"),
        ("10/second", "must be a mapping"),
    ],
)
def test_manage_py_check_reports_a_bad_setting(settings: Any, setting: Any, needle: str):
    settings.SYNCFETCH = setting
    with pytest.raises(SystemCheckError, match=r"syncfetch\.E001") as info:
        call_command("check", stdout=io.StringIO(), stderr=io.StringIO())
    assert needle in str(info.value)


def test_manage_py_check_passes_a_good_setting(settings: Any):
    settings.SYNCFETCH = {"limits": ["5/second"], "retry": {"retries": 2}, "timeout": [1, 5]}
    out = io.StringIO()
    call_command("check", stdout=out)
    assert "no issues" in out.getvalue()

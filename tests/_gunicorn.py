"""The apps gunicorn serves in the integration tests, gunicorn itself, and a load driver.

Both apps answer ``GET /proxy/<n>`` by fetching ``$SYNCFETCH_TEST_UPSTREAM/items/<n>``
through their process's syncfetch session, replying ``{"pid": ..., "upstream": status}``
(200, or 502 when the upstream refused), or the integration's 503 when the session
gave up waiting. ``GET /health`` touches no upstream.

This module is also the ``ROOT_URLCONF`` of ``tests.django_settings``; Django is only
imported when Django asks for ``urlpatterns``, so the Flask tests do not need it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from syncfetch import RateLimitExceeded

if TYPE_CHECKING:
    from flask import Flask

    from tests._server import ScriptedServer

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_ENV = "SYNCFETCH_TEST_UPSTREAM"
LIMITS_ENV = "SYNCFETCH_TEST_LIMITS"
MAX_WAIT_ENV = "SYNCFETCH_TEST_MAX_WAIT"
BACKEND_ENV = "SYNCFETCH_TEST_BACKEND"
POOL_FULL = "Connection pool is full"
WORKER_HEADER = "X-Test-Worker"


def _worker_header() -> dict[str, str]:
    """Tells the upstream which worker process sent a request (for failure messages)."""
    return {WORKER_HEADER: str(os.getpid())}


def _raise_rate_limited(retry_after: str | None) -> None:
    raise RateLimitExceeded(
        "test: no token within max_wait",
        key="http://upstream.test:80",
        retry_after=None if retry_after is None else float(retry_after),
    )


# -- Flask ------------------------------------------------------------------------------


def flask_app() -> Flask:
    """The Flask app (gunicorn: ``tests._gunicorn:flask_app()``), configured from the env.

    Built once per process at import, which under ``--preload`` means in the master,
    before the fork: the case syncfetch's fork handling exists for.
    """
    from flask import Flask, request

    import syncfetch.flask

    app = Flask("syncfetch_test_app")
    app.config["SYNCFETCH"] = {
        "limits": os.environ.get(LIMITS_ENV) or None,
        "max_wait": float(os.environ.get(MAX_WAIT_ENV, "0.5")),
        "max_concurrency": 8,
        "store": os.environ.get(BACKEND_ENV) or "memory",
    }
    app.config["UPSTREAM_URL"] = os.environ.get(UPSTREAM_ENV, "http://127.0.0.1:9")
    syncfetch.flask.init_app(app)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"pid": os.getpid()}

    @app.get("/proxy/<int:n>")
    def proxy(n: int) -> tuple[dict[str, Any], int]:
        url = f"{app.config['UPSTREAM_URL']}/items/{n}"
        resp = syncfetch.flask.get_session().get(url, headers=_worker_header())
        return {"pid": os.getpid(), "upstream": resp.status_code}, 200 if resp.ok else 502

    @app.get("/rate-limited")
    def rate_limited() -> str:
        _raise_rate_limited(request.args.get("retry_after"))
        return "unreachable"

    @app.get("/boom")
    def boom() -> str:
        raise ValueError("boom")

    return app


# -- Django -----------------------------------------------------------------------------


def _django_urlpatterns() -> list[Any]:
    from django.conf import settings
    from django.http import HttpRequest, JsonResponse
    from django.urls import path

    from syncfetch.django import get_session

    def health(request: HttpRequest) -> JsonResponse:
        return JsonResponse({"pid": os.getpid()})

    def proxy(request: HttpRequest, n: int) -> JsonResponse:
        resp = get_session().get(f"{settings.UPSTREAM_URL}/items/{n}", headers=_worker_header())
        body = {"pid": os.getpid(), "upstream": resp.status_code}
        return JsonResponse(body, status=200 if resp.ok else 502)

    def rate_limited(request: HttpRequest) -> JsonResponse:
        _raise_rate_limited(request.GET.get("retry_after"))
        raise AssertionError("unreachable")

    def boom(request: HttpRequest) -> JsonResponse:
        raise ValueError("boom")

    return [
        path("health", health),
        path("proxy/<int:n>", proxy),
        path("rate-limited", rate_limited),
        path("boom", boom),
    ]


def __getattr__(name: str) -> Any:
    # Django reads ROOT_URLCONF's ``urlpatterns`` with getattr (PEP 562 applies).
    if name == "urlpatterns":
        patterns = globals()["urlpatterns"] = _django_urlpatterns()
        return patterns
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- gunicorn ---------------------------------------------------------------------------


@dataclasses.dataclass
class Gunicorn:
    """A running gunicorn: its master process, base URL and combined stdout/stderr log."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def run_gunicorn(
    app: str,
    *,
    log_path: Path,
    env: Mapping[str, str],
    workers: int = 2,
    threads: int = 8,
    preload: bool = False,
    startup_timeout: float = 20.0,
) -> Iterator[Gunicorn]:
    """Serve ``app`` with gthread workers on a free 127.0.0.1 port; always stopped after.

    Port 0 lets the kernel pick the port, read back from gunicorn's "Listening at"
    line, so no other process can take it between a probe and the bind.
    """
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind=127.0.0.1:0",
        f"--workers={workers}",
        "--worker-class=gthread",
        f"--threads={threads}",
        "--timeout=30",
        "--graceful-timeout=3",
        "--log-level=info",
        "--error-logfile=-",
        *(["--preload"] if preload else []),
        # gunicorn >= 25.1 opens a control socket at one path in $HOME by default: two
        # gunicorns (tests running at once, or a developer's own) would fight over it.
        *(["--no-control-socket"] if _has_control_socket() else []),
        app,
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own process group, so the finally below can reach stray workers too.
            start_new_session=True,
        )
    try:
        url = _wait_ready(proc, log_path, workers, startup_timeout)
        yield Gunicorn(proc, url, log_path)
    finally:
        _stop(proc)


def _has_control_socket() -> bool:
    major, minor = (int(part) for part in metadata.version("gunicorn").split(".")[:2])
    return (major, minor) >= (25, 1)


def _wait_ready(proc: subprocess.Popen[bytes], log_path: Path, workers: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    url = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}:\n{log_path.read_text()}")
        text = log_path.read_text(errors="replace")
        match = re.search(r"Listening at: (http://127\.0\.0\.1:\d+)", text)
        url = match.group(1) if match else None
        if url and text.count("Booting worker with pid") >= workers:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    return url
        time.sleep(0.05)
    raise RuntimeError(f"gunicorn not ready within {timeout} s:\n{log_path.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (graceful); SIGKILL to the whole group if the master lingers."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        # The group we created (start_new_session), killed while its leader still
        # exists, so the id cannot belong to anyone else yet.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


# -- load -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int
    retry_after: str | None
    body: Any


def hammer(base_url: str, total: int, threads: int) -> list[Reply]:
    """GET ``{base_url}/proxy/<i>`` for i in range(total) from a separate client process.

    The client is a process of its own because its threads would otherwise compete for
    the GIL with the scripted upstream in the test process, delaying the upstream's
    arrival timestamps (by over 100 ms on a loaded 2-core machine) and so skewing the
    windows it checks: a real upstream is not slowed down by its clients' CPU.
    """
    proc = subprocess.run(
        [sys.executable, "-m", "tests._gunicorn", base_url, str(total), str(threads)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"load client failed ({proc.returncode}):\n{proc.stderr}")
    return [Reply(**json.loads(line)) for line in proc.stdout.splitlines()]


def _hammer_here(base_url: str, total: int, threads: int, pause_on_503: float = 0.5) -> None:
    """The client process: ``threads`` threads share the ``total`` requests.

    Each request opens a new connection, so the kernel spreads them over the workers.
    A client told 503 pauses briefly, as a polite client would, instead of spending
    the whole budget in a tight loop of instant 503s within one rate window. One JSON
    line per reply on stdout.
    """
    lock = threading.Lock()
    indices = iter(range(total))

    def run() -> None:
        while True:
            with lock:
                i = next(indices, None)
            if i is None:
                return
            resp = requests.get(f"{base_url}/proxy/{i}", timeout=15)
            try:
                body = resp.json()
            except ValueError:
                body = resp.text
            reply = Reply(resp.status_code, resp.headers.get("Retry-After"), body)
            line = json.dumps(dataclasses.asdict(reply))
            with lock:
                print(line, flush=True)
            if resp.status_code == 503:
                time.sleep(pause_on_503)

    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(run) for _ in range(threads)]:
            future.result()


def summary(replies: list[Reply]) -> str:
    """One line for assertion messages: statuses and a few odd bodies."""
    counts: dict[int, int] = {}
    for reply in replies:
        counts[reply.status] = counts.get(reply.status, 0) + 1
    odd = [r for r in replies if r.status not in (200, 503)][:3]
    return json.dumps({"statuses": counts, "odd": [dataclasses.asdict(r) for r in odd]})


if __name__ == "__main__":
    _hammer_here(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))


def check_load_outcome(
    replies: list[Reply],
    server: ScriptedServer,
    log: str,
    *,
    workers: int,
    limit: int,
    min_ok: int,
    require_shed: bool,
) -> None:
    """What every gunicorn load test demands of the app and of the upstream it calls."""
    ok = [r for r in replies if r.status == 200]
    shed = [r for r in replies if r.status == 503]
    assert len(ok) + len(shed) == len(replies), summary(replies)
    assert all(r.body["upstream"] == 200 for r in ok), summary(replies)
    assert all(r.retry_after is not None and int(r.retry_after) >= 1 for r in shed)
    assert all(r.body["error"] == "upstream_rate_limited" for r in shed)
    if require_shed:
        # Both kinds happened: the load was above the limit for several windows.
        assert shed, summary(replies)
    assert len(ok) >= min_ok, summary(replies)
    assert len({r.body["pid"] for r in ok}) == workers, summary(replies)
    assert server.count(status=429) == 0
    assert server.max_in_window(1.0) <= limit
    assert server.count() == len(ok)  # one upstream call per 200, none for a 503
    assert POOL_FULL not in log
    assert "Traceback" not in log, log

"""``syncfetch demo``: the strict local provider, the floor, and the command end to end."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from syncfetch._demo import Report, Row, format_table, plot
from syncfetch._provider import (
    RESET,
    Arrival,
    Provider,
    ProviderConfig,
    ProviderServer,
    SlidingWindow,
    floor_seconds,
    retry_after,
)
from tests import _child

QUIET = {"fail_rate": 0.0, "reset_rate": 0.0, "latency": 0.0}


@pytest.fixture
def serve() -> Iterator[list[ProviderServer]]:
    """Start ProviderServers in this process (threads); all are closed after the test."""
    started: list[ProviderServer] = []
    yield started
    for server in started:
        server.shutdown()
        server.server_close()


def start(started: list[ProviderServer], **config: float) -> ProviderServer:
    server = ProviderServer(ProviderConfig(**config))  # type: ignore[arg-type]
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    started.append(server)
    return server


def test_above_the_limit_gets_429_with_retry_after(serve: list[ProviderServer]) -> None:
    server = start(serve, rate=3, per_minute=0, **QUIET)
    with requests.Session() as session:
        statuses = [session.get(f"{server.url}items/{i}").status_code for i in range(3)]
        over = session.get(f"{server.url}items/3")
    assert statuses == [200, 200, 200]
    assert over.status_code == 429
    assert over.headers["Retry-After"] == "1"
    assert over.json()["retry_after"] == 1


def test_per_minute_limit_asks_for_the_rest_of_the_minute(serve: list[ProviderServer]) -> None:
    server = start(serve, rate=100, per_minute=2, **QUIET)
    with requests.Session() as session:
        assert [session.get(server.url).status_code for _ in range(2)] == [200, 200]
        over = session.get(server.url)
    assert over.status_code == 429
    assert 59 <= int(over.headers["Retry-After"]) <= 60


def test_under_the_limit_everything_is_200(serve: list[ProviderServer]) -> None:
    server = start(serve, rate=50, per_minute=1000, **QUIET)
    with requests.Session() as session:
        responses = [session.get(f"{server.url}items/{i}") for i in range(40)]
    assert {r.status_code for r in responses} == {200}
    assert responses[7].json() == {"path": "/items/7", "ok": True}


def test_fail_rate_one_gives_503s(serve: list[ProviderServer]) -> None:
    server = start(serve, rate=50, per_minute=0, fail_rate=1.0, reset_rate=0.0, latency=0.0)
    with requests.Session() as session:
        responses = [session.get(f"{server.url}items/{i}") for i in range(10)]
    assert {r.status_code for r in responses} == {503}
    assert all("Retry-After" not in r.headers for r in responses)


def test_reset_rate_one_resets_the_connection(serve: list[ProviderServer]) -> None:
    server = start(serve, rate=50, per_minute=0, fail_rate=0.0, reset_rate=1.0, latency=0.0)
    with requests.Session() as session, pytest.raises(requests.ConnectionError) as info:
        session.get(server.url)
    assert "reset" in str(info.value).lower()
    assert [r.status for r in server.records()] == [RESET]


def test_faults_are_seeded_per_path_and_attempt(serve: list[ProviderServer]) -> None:
    config = {"rate": 0, "per_minute": 0, "fail_rate": 0.3, "reset_rate": 0.02, "latency": 0.0}
    first, second = start(serve, **config), start(serve, **config)
    paths = [f"/items/{i}" for i in range(1000)] * 2  # each path twice: attempts 0 and 1
    a = [first.decide(p, 0.0)[0] for p in paths]
    b = [second.decide(p, 0.0)[0] for p in paths]
    assert a == b
    assert a[:1000] != a[1000:]  # a retry of a path is a fresh draw
    assert 500 <= a.count(503) <= 700  # about 30% of 2000
    assert 20 <= a.count(RESET) <= 70  # about 2%


def test_only_admitted_requests_count_in_the_window() -> None:
    window = SlidingWindow([(2, 1.0)])
    assert window.admit(0.0) == 0.0
    assert window.admit(0.0) == 0.0
    assert window.admit(0.5) == pytest.approx(0.5)  # refused: not counted
    assert window.admit(1.0) == 0.0  # so the window frees at 1.0, not 1.5
    assert window.admit(1.0) == 0.0
    assert window.admit(1.2) == pytest.approx(0.8)


def test_retry_after_rounds_up_to_at_least_one_second() -> None:
    assert [retry_after(w) for w in (0.001, 0.5, 1.0, 1.01, 59.2)] == [1, 1, 1, 2, 60]


def test_stats_come_back_from_the_child_process() -> None:
    config = ProviderConfig(rate=4, per_minute=0, fail_rate=0.0, reset_rate=0.0, latency=0.0)
    with Provider(config) as provider, requests.Session() as session:
        seen = [session.get(f"{provider.url}items/{i}").status_code for i in range(6)]
        records = provider.stop()
    assert seen == [200, 200, 200, 200, 429, 429]
    assert [(r.path, r.status) for r in records] == [(f"/items/{i}", s) for i, s in enumerate(seen)]
    times = [r.at for r in records]
    assert times == sorted(times) and times[-1] - times[0] < 5


@pytest.mark.parametrize(
    ("admitted", "limits", "expected"),
    [
        (0, [(25, 1.0)], 0.0),
        (1, [(25, 1.0)], 0.0),
        (25, [(25, 1.0)], 0.0),  # one burst
        (26, [(25, 1.0)], 1.0),
        (100, [(25, 1.0)], 3.0),
        (1000, [(25, 1.0), (1000, 60.0)], 39.0),  # the minute window never binds
        (1001, [(25, 1.0), (1000, 60.0)], 60.0),  # ...until request 1001
        (1026, [(25, 1.0), (1000, 60.0)], 61.0),
        (5, [(2, 1.0), (3, 10.0)], 10.0),
        (50, [], 0.0),
    ],
)
def test_floor_is_the_earliest_schedule(
    admitted: int, limits: list[tuple[int, float]], expected: float
) -> None:
    assert floor_seconds(admitted, limits) == pytest.approx(expected)


def test_floor_schedule_respects_every_window() -> None:
    # Brute force: at the floor, the last request is admitted by an exact window.
    limits = [(3, 1.0), (7, 5.0)]
    window = SlidingWindow(limits)
    t, n = 0.0, 0
    while n < 20:
        wait = window.admit(t)
        if wait == 0.0:
            n += 1
        else:
            t += wait
    assert t == pytest.approx(floor_seconds(20, limits))


def demo(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncfetch", "demo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_demo_prints_a_row_per_client_and_syncfetch_gets_no_429() -> None:
    proc = demo("-n", "60", "--rate", "50", "--latency", "0.005", "--budget", "3")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    rows = {}
    for line in proc.stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == 8:
            rows[cells[0]] = cells
    names = ["thread flood", "semaphore(50)+sleep(0.1)", "requests-ratelimiter"]
    for name in [*names, "requests-futures", "syncfetch"]:
        assert name in rows, proc.stdout
    assert rows["syncfetch"][3] == "0", proc.stdout  # the 429s column
    assert int(rows["thread flood"][3].replace(",", "")) > 0, proc.stdout


def test_demo_usage_errors_exit_2() -> None:
    for args in (
        ["--fail-rate", "1.5"],
        ["--rate", "0"],
        ["--fail-rate", "0.9", "--reset-rate", "0.2"],
        ["--port", "8080"],  # without --serve
    ):
        proc = demo(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_serve_prints_its_url_and_stops_on_ctrl_c() -> None:
    proc = _child.python("demo", "--serve", "--latency", "0", module="syncfetch")
    try:
        assert proc.stdout is not None
        url = re.search(r"http://127\.0\.0\.1:\d+/", proc.stdout.readline())
        assert url is not None
        with requests.Session() as session:
            session.get(url.group(0) + "items/1", timeout=10)
        proc.send_signal(signal.SIGINT)
        out, err = _child.finish(proc, timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "received 1 requests" in out


def test_importing_the_cli_does_not_import_matplotlib() -> None:
    code = "import sys, syncfetch._cli; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 0


def _rows() -> list[Row]:
    arrivals = [Arrival(i / 30, "/", 429 if i % 3 else 200) for i in range(90)]
    return [Row("flood", 90, Report(ok=30, finished=90, elapsed=3.0), arrivals, 2.0)]


def test_plot_without_matplotlib_prints_a_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import raises ImportError
    assert plot(_rows(), ProviderConfig(), str(tmp_path / "p.png")) is False
    assert "pip install matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()


def test_plot_draws_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "p.png"
    assert plot(_rows(), ProviderConfig(), str(path)) is True
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_budget_footnote_only_when_a_client_was_stopped() -> None:
    done = Row("a", 2, Report(ok=2, finished=2, elapsed=1.0), [], 0.0)
    stopped = Row("b", 2, Report(ok=1, finished=1, elapsed=5.0, stopped=True), [], 0.0)
    assert "stopped at the" not in format_table([done], ProviderConfig(), 5.0)
    table = format_table([done, stopped], ProviderConfig(), 5.0)
    assert "5.0 s*" in table and "*: stopped at the 5 s budget" in table

"""submit/map: backpressure, one result per item, Ctrl-C, shared pipeline."""

from __future__ import annotations

import signal
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest
import requests

import syncfetch
from tests import _child
from tests._server import ScriptedServer, Step
from tests._stub import CannedAdapter, GateAdapter


@pytest.mark.parametrize(("ordered", "ahead"), [(True, 8 * 4), (False, 2 * 4)])
def test_map_pulls_only_a_window_ahead(ordered: bool, ahead: int) -> None:
    pulled = 0

    def items() -> Iterator[str]:
        nonlocal pulled
        for i in range(10_000):
            pulled += 1
            yield f"mock://host/{i}"

    with syncfetch.Session(max_concurrency=4) as s:
        s.mount("mock://", CannedAdapter())
        results = s.map(items(), ordered=ordered)
        assert pulled == 0  # lazy: nothing happens before iteration
        for n, result in enumerate(results, 1):
            assert result.ok
            assert pulled <= n + ahead
            if n == 500:
                break
    assert pulled <= 500 + ahead


def test_ordered_map_keeps_workers_busy_past_a_slow_item() -> None:
    gate = GateAdapter()
    with syncfetch.Session(max_concurrency=2) as s:
        s.mount("slow://", gate)
        s.mount("mock://", CannedAdapter())
        items = ["slow://h/0"] + [f"mock://h/{i}" for i in range(1, 30)]
        results = s.map(items)
        first = threading.Thread(target=lambda: next(results))
        first.start()
        # While item 0 blocks, later items still run (up to the ordered window).
        deadline = time.monotonic() + 10
        while s.stats.requests < 15 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        # The ordered window is 8 x 2 workers: item 0 (blocked) and 15 finished ones.
        assert s.stats.requests == 15
        gate.release.set()
        first.join(10)
        assert [r.index for r in results] == list(range(1, 30))


def test_submit_blocks_when_pending_calls_reach_the_bound() -> None:
    gate = GateAdapter()
    with syncfetch.Session(max_concurrency=2) as s:  # 2 workers, 4 pending at most
        s.mount("mock://", gate)
        futures = [s.submit("GET", f"mock://h/{i}") for i in range(4)]
        fifth_submitted = threading.Event()

        def submit_fifth() -> None:
            futures.append(s.submit("GET", "mock://h/5"))
            fifth_submitted.set()

        threading.Thread(target=submit_fifth).start()
        assert not fifth_submitted.wait(0.3)  # blocked, not queued
        gate.release.set()
        assert fifth_submitted.wait(10)
        assert [f.result(10).status_code for f in futures] == [200] * 5


def test_every_item_yields_exactly_one_result(server: ScriptedServer) -> None:
    server.script("/flaky", Step(status=503))
    server.script("/hang", Step(action="hang", delay=5))
    server.script("/ok", Step(body=b"fine"))
    closed = ScriptedServer().start()
    refused = closed.url_for("/x")
    closed.stop()

    def bad_hook(resp: requests.Response, **kw: object) -> None:
        if "hook" in resp.url:
            raise RuntimeError("hook blew up")

    items: list[str | requests.Request] = [
        server.url_for("/ok"),
        "not a url",
        "gopher://example.test/",
        refused,
        server.url_for("/hang"),
        server.url_for("/flaky"),
        server.url_for("/hook"),
        requests.Request("POST", server.url_for("/ok"), json={"a": 1}),
        42,  # type: ignore[list-item]
    ]
    with syncfetch.Session(retry=2, timeout=(1, 0.5)) as s:
        results = list(s.map(items, hooks={"response": bad_hook}))
    assert [r.index for r in results] == list(range(len(items)))
    assert [r.request for r in results] == items
    kinds = [type(r.error).__name__ if r.error else r.response.status_code for r in results]  # type: ignore[union-attr]
    assert (
        kinds
        == [
            200,
            "MissingSchema",
            "InvalidSchema",
            "ConnectionError",
            "ConnectionError",  # read timeout while reading the body maps to ConnectionError
            503,
            "RuntimeError",
            200,
            "TypeError",
        ]
        or kinds[4] == "ReadTimeout"
    )
    assert [r.ok for r in results] == [True] + [False] * 6 + [True, False]
    assert results[5].attempts == 3 and results[0].attempts == 1
    assert all(str(r).startswith(f"#{r.index} ") for r in results)


def test_rate_limit_exceeded_is_a_result_not_a_crash(server: ScriptedServer) -> None:
    with syncfetch.Session("2/minute", max_wait=0) as s:
        results = list(s.map([server.url_for(f"/{i}") for i in range(5)]))
    assert sum(r.ok for r in results) == 2
    assert sum(isinstance(r.error, syncfetch.RateLimitExceeded) for r in results) == 3


def test_unordered_yields_each_index_once(server: ScriptedServer) -> None:
    server.script("/slow", Step(delay=0.3))
    urls = [server.url_for("/slow" if i == 0 else f"/fast{i}") for i in range(20)]
    with syncfetch.Session(max_concurrency=4) as s:
        indices = [r.index for r in s.map(urls, ordered=False)]
        ordered = [r.index for r in s.map(urls)]
    assert sorted(indices) == list(range(20)) and indices[0] != 0
    assert ordered == list(range(20))


def test_request_items_carry_their_own_method_headers_and_body(server: ScriptedServer) -> None:
    items = [
        requests.Request("PUT", server.url_for("/a"), data=b"one", headers={"X-Item": "1"}),
        requests.Request("DELETE", server.url_for("/b")),
        server.url_for("/c"),
    ]
    with syncfetch.Session() as s:
        results = list(s.map(items, headers={"X-Batch": "yes"}))
    assert all(r.ok for r in results)
    by_path = {r.path: r for r in server.records}
    assert (by_path["/a"].method, by_path["/a"].body, by_path["/a"].headers["X-Item"]) == (
        "PUT",
        b"one",
        "1",
    )
    assert by_path["/a"].headers["X-Batch"] == "yes"
    assert by_path["/b"].method == "DELETE" and by_path["/c"].method == "GET"


def test_map_and_direct_calls_share_the_concurrency_cap(server: ScriptedServer) -> None:
    server.script("/slow", Step(delay=0.05))
    url = server.url_for("/slow")
    with syncfetch.Session(max_concurrency=3, max_workers=8) as s:
        direct = [threading.Thread(target=lambda: [s.get(url) for _ in range(5)]) for _ in range(6)]
        for t in direct:
            t.start()
        results = list(s.map([url] * 40))
        for t in direct:
            t.join()
    assert all(r.ok for r in results)
    assert server.peak_in_flight <= 3


def test_close_cancels_work_not_started() -> None:
    gate = GateAdapter()
    s = syncfetch.Session(max_concurrency=2)
    s.mount("mock://", gate)
    futures = [s.submit("GET", f"mock://h/{i}") for i in range(4)]
    while gate.started < 2:
        time.sleep(0.01)
    closer = threading.Thread(target=s.close)
    closer.start()
    time.sleep(0.1)
    gate.release.set()
    closer.join(10)
    assert not closer.is_alive()
    assert [f.cancelled() for f in futures] == [False, False, True, True]
    assert [f.result().status_code for f in futures[:2]] == [200, 200]


CTRL_C_SCRIPT = textwrap.dedent(
    """
    import sys, syncfetch
    url = sys.argv[1]
    with syncfetch.Session(max_concurrency=4) as s:
        for i, r in enumerate(s.map(f"{url}/slow/{n}" for n in range(1000))):
            print(i, r.ok, flush=True)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_stops_the_batch_promptly(server: ScriptedServer) -> None:
    for n in range(1000):
        server.script(f"/slow/{n}", Step(delay=0.2))
    proc = _child.python(server.url, code=CTRL_C_SCRIPT)
    assert proc.stdout is not None
    for _ in range(5):
        proc.stdout.readline()
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = _child.finish(proc, timeout=20)
    took = time.monotonic() - sent
    assert "KeyboardInterrupt" in err
    # The ordered window (8 x 4 workers) may finish; nothing like the 1000 in the input.
    assert server.count() <= 5 + 8 * 4 + 4
    assert took < 0.2 * 3 + 5.0  # a couple of in-flight rounds, slack for a busy machine
    assert proc.returncode != 0


def test_dns_failure_is_a_result_and_not_retried() -> None:
    from requests.adapters import BaseAdapter
    from urllib3.exceptions import MaxRetryError, NameResolutionError

    class NoDNS(BaseAdapter):
        calls = 0

        def send(self, request: requests.PreparedRequest, **kw: object) -> requests.Response:  # type: ignore[override]
            NoDNS.calls += 1
            reason = NameResolutionError("nowhere.invalid", None, OSError("no such host"))  # type: ignore[arg-type]
            raise requests.ConnectionError(MaxRetryError(None, request.url or "", reason))  # type: ignore[arg-type]

        def close(self) -> None:
            pass

    with syncfetch.Session(retry=3) as s:
        s.mount("dns://", NoDNS())
        [result] = list(s.map(["dns://nowhere.invalid/"]))
    assert isinstance(result.error, requests.ConnectionError) and NoDNS.calls == 1


def test_request_items_keep_falsy_json(server: ScriptedServer) -> None:
    items = [requests.Request("POST", server.url_for("/j"), json=[])]
    with syncfetch.Session() as s:
        [result] = list(s.map(items, json={"batch": True}))
    assert result.ok and server.records[0].body == b"[]"


def test_breaking_out_of_a_rate_limited_map_closes_promptly(server: ScriptedServer) -> None:
    s = syncfetch.Session("2/minute", max_concurrency=4)
    for result in s.map([server.url_for(f"/{i}") for i in range(20)]):
        assert result.ok
        break
    start = time.monotonic()
    s.close()  # items still waiting for tokens (minutes away) end at once
    assert time.monotonic() - start < 5
    assert server.count() == 2


@pytest.mark.parametrize("ordered", [True, False])
def test_close_during_map_yields_one_result_per_item(ordered: bool) -> None:
    # 3 workers, 2/minute: two items are on the wire (gated), a third waits for a
    # token; close() ends that wait and the others never start.
    gate = GateAdapter()
    s = syncfetch.Session("2/minute", max_concurrency=3, max_workers=3)
    s.mount("mock://", gate)
    results: list[syncfetch.Result] = []
    failure: list[BaseException] = []

    def consume() -> None:
        try:
            results.extend(s.map([f"mock://h/{i}" for i in range(10)], ordered=ordered))
        except BaseException as exc:  # pragma: no cover - the failure being tested
            failure.append(exc)

    consumer = threading.Thread(target=consume)
    consumer.start()
    deadline = time.monotonic() + 10
    while gate.started < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # the third worker waits for a token by now
    closer = threading.Thread(target=s.close)
    closer.start()
    time.sleep(0.1)
    gate.release.set()  # the two on the wire finish
    closer.join(10)
    consumer.join(10)
    assert not closer.is_alive() and not consumer.is_alive()
    assert failure == []
    assert sorted(r.index for r in results) == list(range(10))
    # Which two items won the tokens depends on how the workers were scheduled: those
    # two finish, every other one is a SessionClosed result.
    sent = [r for r in results if r.ok]
    assert len(sent) == 2, results
    cut = [r for r in results if not r.ok]
    assert all(isinstance(r.error, syncfetch.SessionClosed) for r in cut), cut
    assert gate.started == 2  # nothing else reached the wire
    if ordered:
        assert [r.index for r in results] == list(range(10))


def test_map_workers_take_items_without_waiting_for_the_consumer() -> None:
    # The consumer sits on its first result; the workers carry on up to the window.
    with syncfetch.Session(max_concurrency=4) as s:
        s.mount("mock://", CannedAdapter())
        results = s.map([f"mock://h/{i}" for i in range(100)], ordered=False)
        next(results)
        deadline = time.monotonic() + 10
        while s.stats.requests < 9 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        assert s.stats.requests == 9  # the one yielded + a full window of 2 x 4
        assert len(list(results)) == 99


def test_submit_gets_a_worker_while_a_long_map_runs() -> None:
    with syncfetch.Session(max_concurrency=2) as s:
        s.mount("mock://", CannedAdapter())
        items = (f"mock://h/{i}" for i in range(1_000_000))
        results = s.map(items)
        next(results)
        future = s.submit("GET", "mock://h/direct")
        for _ in range(200):  # the map goes on; the submitted call runs meanwhile
            next(results)
        assert future.result(10).status_code == 200


def test_submit_and_wait_inside_a_map_loop_does_not_deadlock() -> None:
    # The consumer waits on a submitted call while every map worker waits for it.
    with syncfetch.Session(max_concurrency=2) as s:
        s.mount("mock://", CannedAdapter())
        for n, result in enumerate(s.map(f"mock://h/{i}" for i in range(50))):
            assert result.ok
            if n % 10 == 0:
                time.sleep(0.05)  # the window fills meanwhile
                assert s.submit("GET", "mock://h/inner").result(10).status_code == 200

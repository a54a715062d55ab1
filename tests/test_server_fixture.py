"""Self-tests for the scripted test server (tests/_server.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime

import pytest
import requests

from tests._server import ScriptedServer, Step, http_date


def test_default_is_200_ok(server: ScriptedServer) -> None:
    r = requests.get(server.url_for("/anything?x=1"), timeout=2)
    assert (r.status_code, r.content) == (200, b"ok")
    assert r.headers["Content-Length"] == "2"
    [rec] = server.records
    assert (rec.method, rec.path, rec.status) == ("GET", "/anything?x=1", 200)
    assert rec.headers["user-agent"].startswith("python-requests")
    assert server.count("/anything") == 1
    assert server.count("/anything?x=1", status=200) == 1


def test_every_method_and_head_has_no_body(server: ScriptedServer) -> None:
    with requests.Session() as s:
        for method in (
            "GET",
            "HEAD",
            "POST",
            "PUT",
            "PATCH",
            "DELETE",
            "OPTIONS",
            "PROPFIND",
        ):
            r = s.request(method, server.url_for("/m"), timeout=2)
            assert r.status_code == 200
            assert r.content == (b"" if method == "HEAD" else b"ok")
    assert [r.method for r in server.records][:2] == ["GET", "HEAD"]


def test_script_sequence_then_last_step_repeats(server: ScriptedServer) -> None:
    server.script("/flaky", Step(status=503), Step(status=503, body=b"busy"), Step(body=b"done"))
    with requests.Session() as s:
        got = [s.get(server.url_for("/flaky"), timeout=2) for _ in range(5)]
    assert [r.status_code for r in got] == [503, 503, 200, 200, 200]
    assert got[1].content == b"busy" and got[4].content == b"done"
    assert server.statuses("/flaky") == [503, 503, 200, 200, 200]
    assert server.count(status=503) == 2


def test_redirect_step(server: ScriptedServer) -> None:
    server.script("/old", Step(status=302, headers={"Location": "/new"}))
    r = requests.get(server.url_for("/old"), timeout=2)
    assert r.status_code == 200 and r.url == server.url_for("/new")
    assert server.statuses() == [302, 200]


def test_callable_header_is_evaluated_per_response(server: ScriptedServer) -> None:
    calls = []

    def retry_after() -> str:
        calls.append(1)
        return http_date(30)

    server.script("/busy", Step(status=503, headers={"Retry-After": retry_after}))
    r1 = requests.get(server.url_for("/busy"), timeout=2)
    r2 = requests.get(server.url_for("/busy"), timeout=2)
    assert len(calls) == 2
    when = parsedate_to_datetime(r1.headers["Retry-After"]).timestamp()
    assert 20 < when - time.time() < 40
    assert r2.status_code == 503


def test_chunked_request_body_is_decoded(server: ScriptedServer) -> None:
    def gen() -> Iterator[bytes]:
        yield b"hello "
        yield b"chunked "
        yield b"world"

    r = requests.post(server.url_for("/upload"), data=gen(), timeout=2)
    assert r.status_code == 200
    [rec] = server.records
    assert rec.headers["Transfer-Encoding"] == "chunked"
    assert rec.body == b"hello chunked world"


def test_content_length_request_body(server: ScriptedServer) -> None:
    with requests.Session() as s:
        s.put(server.url_for("/a"), data=b"x" * 10_000, timeout=2)
        s.post(server.url_for("/b"), json={"k": 1}, timeout=2)
    assert [r.body for r in server.records] == [b"x" * 10_000, b'{"k": 1}']
    assert len({r.client_port for r in server.records}) == 1  # bodies fully consumed


def test_reset_raises_connection_error(server: ScriptedServer) -> None:
    server.script("/reset", Step(action="reset"))
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url_for("/reset"), timeout=2)
    assert server.statuses("/reset") == [0]


def test_truncate_raises_chunked_encoding_error(server: ScriptedServer) -> None:
    server.script("/cut", Step(body=b"partial", action="truncate"))
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(server.url_for("/cut"), timeout=2)


def test_trickle_sends_body_slowly(server: ScriptedServer) -> None:
    server.script("/slow", Step(body=b"abcd", action="trickle", trickle_interval=0.05))
    start = time.monotonic()
    r = requests.get(server.url_for("/slow"), timeout=2)
    assert r.content == b"abcd"
    assert time.monotonic() - start >= 0.14  # three gaps of 0.05 s


def test_trickle_trips_read_timeout(server: ScriptedServer) -> None:
    server.script("/slow", Step(body=b"abcdef", action="trickle", trickle_interval=0.5))
    with pytest.raises(requests.exceptions.ConnectionError):  # urllib3 wraps it as ReadTimeoutError
        requests.get(server.url_for("/slow"), timeout=(1, 0.2))


def test_hang_raises_read_timeout(server: ScriptedServer) -> None:
    server.script("/hang", Step(action="hang", delay=10))
    with pytest.raises(requests.ReadTimeout):
        requests.get(server.url_for("/hang"), timeout=(1, 0.3))
    assert server.statuses("/hang") == [0]
    assert server.in_flight == 1  # still hanging; stop() must cut it short


def test_limit_sliding_window(server: ScriptedServer) -> None:
    server.limit([(10, 5.0)], retry_after=3)
    with requests.Session() as s:
        got = [s.get(server.url_for(f"/p{i % 3}"), timeout=2) for i in range(15)]
    assert [r.status_code for r in got] == [200] * 10 + [429] * 5
    assert all(r.headers["Retry-After"] == "3" for r in got[10:])
    assert got[-1].content == b"rate limited"
    assert server.max_in_window(5.0) == 10
    assert sum(r.rate_limited for r in server.records) == 5


def test_limit_window_slides(server: ScriptedServer) -> None:
    server.limit([(2, 0.5)])
    with requests.Session() as s:
        first = [s.get(server.url, timeout=2).status_code for _ in range(3)]
        time.sleep(0.55)
        second = s.get(server.url, timeout=2).status_code
    assert first == [200, 200, 429] and second == 200


def test_limit_is_exact_under_concurrency(server: ScriptedServer) -> None:
    server.limit([(20, 10.0)])
    statuses: list[int] = []

    def worker() -> None:
        with requests.Session() as s:
            for _ in range(5):
                statuses.append(s.get(server.url, timeout=2).status_code)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] * 20 + [429] * 20
    assert server.max_in_window(10.0) == 20


def test_peak_in_flight(server: ScriptedServer) -> None:
    server.script("/slow", Step(delay=0.3))
    barrier = threading.Barrier(5)
    codes: list[int] = []

    def worker() -> None:
        barrier.wait()
        codes.append(requests.get(server.url_for("/slow"), timeout=2).status_code)

    threads = [threading.Thread(target=worker) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * 5
    assert server.peak_in_flight == 5
    assert server.wait_idle(1.0) and server.in_flight == 0


def test_keep_alive_reuses_one_connection(server: ScriptedServer) -> None:
    with requests.Session() as s:
        for _ in range(20):
            assert s.get(server.url_for("/ka"), timeout=2).status_code == 200
    assert server.count("/ka") == 20
    assert len({r.client_port for r in server.records}) == 1


def test_reset_clears_state(server: ScriptedServer) -> None:
    server.script("/x", Step(status=500))
    server.limit([(1, 60.0)])
    requests.get(server.url_for("/x"), timeout=2)
    # The handler leaves in_flight just after its write, i.e. possibly after the client
    # already has the response.
    assert server.wait_idle()
    server.reset()
    assert server.records == [] and server.peak_in_flight == 0
    assert requests.get(server.url_for("/x"), timeout=2).status_code == 200
    assert requests.get(server.url_for("/x"), timeout=2).status_code == 200


def test_stop_is_prompt_with_open_keep_alive_connection() -> None:
    srv = ScriptedServer().start()
    srv.script("/hang", Step(action="hang"))
    with requests.Session() as s:
        assert s.get(srv.url, timeout=2).status_code == 200  # leaves the connection open
        errors: list[Exception] = []

        def hang() -> None:
            try:
                requests.get(srv.url_for("/hang"), timeout=5)
            except requests.RequestException as exc:
                errors.append(exc)

        hung = threading.Thread(target=hang)
        hung.start()
        time.sleep(0.1)
        start = time.monotonic()
        srv.stop()
        assert time.monotonic() - start < 2.0
        hung.join(2)
        assert not hung.is_alive()
        assert len(errors) == 1  # the hung request was cut off, not answered
    srv.stop()  # idempotent


def test_context_manager() -> None:
    with ScriptedServer() as srv:
        assert requests.get(srv.url, timeout=2).content == b"ok"
    with pytest.raises(RuntimeError):
        _ = srv.url

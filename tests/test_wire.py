"""The pipeline against a real HTTP/1.1 server on 127.0.0.1."""

from __future__ import annotations

import io
import logging
import pickle
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

import syncfetch
from tests._server import ScriptedServer, Step


def hammer(n_threads: int, calls: list[Callable[[], Any]]) -> list[Any]:
    """Run every call from a pool of n_threads; re-raise the first exception."""
    with ThreadPoolExecutor(n_threads) as pool:
        return list(pool.map(lambda f: f(), calls))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_strict_server_sees_no_429_from_16_threads(strict_server: ScriptedServer) -> None:
    strict_server.limit([(25, 1.0)])
    url = strict_server.url_for("/item")
    with syncfetch.Session("25/second", max_concurrency=16) as s:
        statuses = hammer(16, [lambda: s.get(url).status_code] * 100)
    assert statuses == [200] * 100
    assert strict_server.count(status=429) == 0
    assert strict_server.max_in_window(1.0) == 25


def test_two_limits_both_hold_on_the_wire(strict_server: ScriptedServer) -> None:
    strict_server.limit([(10, 1.0), (15, 3.0)])
    url = strict_server.url_for("/")
    with syncfetch.Session(["10/s", "15/3s"], max_concurrency=8) as s:
        hammer(8, [lambda: s.get(url)] * 20)
    assert strict_server.count(status=429) == 0 and strict_server.count() == 20


def test_retries_pay_tokens_too(strict_server: ScriptedServer) -> None:
    # Each path fails twice before succeeding: 3 attempts per call, all rate limited.
    strict_server.limit([(15, 1.0)])
    for i in range(10):
        strict_server.script(f"/f{i}", Step(status=503), Step(status=500), Step())
    with syncfetch.Session("15/s", max_concurrency=10) as s:
        statuses = hammer(
            10, [lambda i=i: s.get(strict_server.url_for(f"/f{i}")).status_code for i in range(10)]
        )
        attempts = s.stats.attempts
    assert statuses == [200] * 10 and attempts == 30
    assert strict_server.count() == 30 and strict_server.count(status=429) == 0


def test_concurrency_is_capped_without_pool_warnings(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.script("/slow", Step(delay=0.05))
    caplog.set_level(logging.WARNING, "urllib3")
    with syncfetch.Session(max_concurrency=4) as s:
        hammer(16, [lambda: s.get(server.url_for("/slow"))] * 48)
    assert server.peak_in_flight == 4
    assert not [r for r in caplog.records if "pool is full" in r.getMessage()]
    assert len({r.client_port for r in server.records}) <= 4  # the pool reused its 4 connections


def test_streamed_response_holds_its_slot_until_closed(server: ScriptedServer) -> None:
    server.script("/big", Step(body=b"x" * 100_000))
    with syncfetch.Session(max_concurrency=1, max_wait=0.2) as s:
        r = s.get(server.url_for("/big"), stream=True)
        with pytest.raises(syncfetch.RateLimitExceeded) as info:
            s.get(server.url_for("/other"))
        assert info.value.retry_after is None
        r.close()
        assert s.get(server.url_for("/other")).status_code == 200
        r = s.get(server.url_for("/big"), stream=True)
        assert sum(len(c) for c in r.iter_content(8192)) == 100_000  # consumed: slot freed
        assert s.get(server.url_for("/other")).status_code == 200


def test_redirect_chain_at_concurrency_one(server: ScriptedServer) -> None:
    server.script("/a", Step(status=302, headers={"Location": "/b"}))
    server.script("/b", Step(status=307, headers={"Location": "/c"}))
    with syncfetch.Session(max_concurrency=1, max_wait=5) as s:
        for stream in (False, True):
            r = s.get(server.url_for("/a"), stream=stream)
            assert r.status_code == 200 and r.content == b"ok"
            assert [h.status_code for h in r.history] == [302, 307]
        assert s.stats.attempts == 6  # every hop pays: 3 hops x 2 calls


@pytest.mark.parametrize("deadline", [None, 10.0])
def test_a_redirect_with_a_broken_gzip_body_is_followed(
    server: ScriptedServer, deadline: float | None
) -> None:
    # As requests does: a hop it follows is drained without decoding.
    broken = Step(
        status=302,
        headers={"Location": "/b", "Content-Encoding": "gzip"},
        body=b"<p>not gzip</p>" * 20,
    )
    policy = syncfetch.RetryPolicy(deadline=deadline)
    with syncfetch.Session(max_concurrency=1, max_wait=5, retry=policy) as s:
        for stream in (False, True):
            server.script("/a", broken)
            r = s.get(server.url_for("/a"), stream=stream)
            assert r.status_code == 200 and r.content == b"ok"
            assert [h.status_code for h in r.history] == [302]
        # Not followed, requests still drains it raw (to find the next request): no error.
        for get in (s.get, requests.get):
            server.script("/a", broken)
            r = get(server.url_for("/a"), allow_redirects=False)
            assert r.status_code == 302 and r.content == b""


def test_redirect_hops_take_tokens(strict_server: ScriptedServer) -> None:
    strict_server.limit([(3, 1.0)])
    for i in range(4):
        strict_server.script(f"/r{i}", Step(status=302, headers={"Location": f"/r{i + 1}"}))
    with syncfetch.Session("3/s") as s:
        assert s.get(strict_server.url_for("/r0")).status_code == 200
    assert strict_server.count() == 5 and strict_server.count(status=429) == 0


def test_connection_reset_is_retried(server: ScriptedServer) -> None:
    server.script("/reset", Step(action="reset"), Step(body=b"fine"))
    with syncfetch.Session() as s:
        assert s.get(server.url_for("/reset")).text == "fine"
        assert s.stats.errors["ConnectionError"] == 1
    assert server.count("/reset") == 2


def test_truncated_body_is_retried_for_get(server: ScriptedServer) -> None:
    server.script("/cut", Step(action="truncate", body=b"abc"), Step(body=b"whole"))
    with syncfetch.Session() as s:
        assert s.get(server.url_for("/cut")).text == "whole"
    assert server.count("/cut") == 2


def test_post_is_not_retried_after_a_reset(server: ScriptedServer) -> None:
    server.script("/pay", Step(action="reset"), Step())
    with syncfetch.Session() as s, pytest.raises(requests.ConnectionError):
        s.post(server.url_for("/pay"), data=b"charge")
    assert server.count("/pay") == 1


def test_refused_connection_is_retried_even_for_post() -> None:
    url = f"http://127.0.0.1:{free_port()}/pay"
    with syncfetch.Session(retry=2) as s:
        with pytest.raises(requests.ConnectionError):
            s.post(url, data=b"charge")
        assert s.stats.attempts == 3


@pytest.mark.parametrize("kind", ["bytesio", "file"])
def test_seekable_body_is_rewound_for_each_attempt(
    server: ScriptedServer, kind: str, tmp_path: Any
) -> None:
    server.script("/up", Step(status=503), Step(action="reset"), Step(status=201))
    payload = b"0123456789" * 1000
    if kind == "bytesio":
        body: Any = io.BytesIO(payload)
    else:
        path = tmp_path / "payload.bin"
        path.write_bytes(payload)
        body = path.open("rb")
    with syncfetch.Session() as s, body:
        assert s.put(server.url_for("/up"), data=body).status_code == 201
    assert [r.body for r in server.records] == [payload] * 3


def test_deadline_bounds_a_hanging_server(server: ScriptedServer) -> None:
    server.script("/hang", Step(action="hang", delay=30))
    policy = syncfetch.RetryPolicy(retries=10, deadline=1.0)
    with syncfetch.Session(retry=policy, timeout=(1, 30)) as s:
        start = time.monotonic()
        with pytest.raises(requests.Timeout):
            s.get(server.url_for("/hang"))
        took = time.monotonic() - start
    assert took < 1.0 + 1.0 + 1.5  # deadline + one connect timeout + slack for a busy box


def test_deadline_bounds_a_trickling_body(server: ScriptedServer) -> None:
    # 40 bytes at one per 0.2 s: each read is quick, so only a deadline stops it.
    server.script("/drip", Step(action="trickle", body=b"x" * 40, trickle_interval=0.2))
    policy = syncfetch.RetryPolicy(retries=0, deadline=1.0)
    with syncfetch.Session(retry=policy, timeout=(1, 5)) as s:
        start = time.monotonic()
        with pytest.raises(syncfetch.DeadlineExceeded):
            s.get(server.url_for("/drip"))
        took = time.monotonic() - start
    assert took < 1.0 + 1.0 + 1.5


def test_fail_fast_never_denies_spare_capacity(server: ScriptedServer) -> None:
    url = server.url_for("/")
    barrier = threading.Barrier(8)

    def call() -> int:
        barrier.wait()
        return s.get(url).status_code

    with syncfetch.Session("1000/s", max_concurrency=8, max_wait=0) as s:
        for _ in range(5):
            assert hammer(8, [call] * 8) == [200] * 8


def test_fail_fast_with_an_empty_bucket(server: ScriptedServer) -> None:
    url = server.url_for("/")
    with syncfetch.Session("2/minute", max_wait=0) as s:
        s.get(url)
        s.get(url)
        start = time.monotonic()
        with pytest.raises(syncfetch.RateLimitExceeded) as info:
            s.get(url)
        assert time.monotonic() - start < 10  # at once, not after the minute the bucket needs
        assert s.stats.rate_limited == 1
    assert 55 < (info.value.retry_after or 0) <= 60.1
    assert info.value.key == f"http://127.0.0.1:{server.port}"
    assert server.count() == 2


def test_backoff_sleep_releases_the_slot(server: ScriptedServer) -> None:
    syncfetch.set_testing(False)  # this test needs the real one-second wait
    server.script("/busy", Step(status=503, headers={"Retry-After": "1"}), Step())
    with syncfetch.Session(max_concurrency=1) as s:
        first = threading.Thread(target=lambda: s.get(server.url_for("/busy")))
        first.start()
        while server.count("/busy") == 0:
            time.sleep(0.01)
        # Another host name for the same server: the Retry-After pauses 127.0.0.1's key,
        # and only the slot (freed by the backoff sleep) is shared.
        quick = server.url_for("/quick").replace("127.0.0.1", "localhost")
        assert s.get(quick).status_code == 200
        first.join()
    assert [r.path for r in server.records] == ["/busy", "/quick", "/busy"]


def test_per_host_false_shares_one_bucket(server: ScriptedServer) -> None:
    other = ScriptedServer().start()
    try:
        with syncfetch.Session("2/minute", per_host=False, max_wait=0) as s:
            s.get(server.url)
            s.get(other.url)
            with pytest.raises(syncfetch.RateLimitExceeded) as info:
                s.get(server.url)
        assert info.value.key == "*"
        with syncfetch.Session("1/minute", max_wait=0) as s:
            s.get(server.url)
            s.get(other.url)  # its own bucket
    finally:
        other.stop()


def test_32_threads_with_cookies(server: ScriptedServer) -> None:
    for i in range(8):
        server.script(f"/c{i}", Step(headers={"Set-Cookie": f"c{i}=v{i}; Path=/"}))
    with syncfetch.Session(max_concurrency=16) as s:
        calls = [lambda i=i: s.get(server.url_for(f"/c{i % 8}")).status_code for i in range(2000)]
        assert hammer(32, calls) == [200] * 2000
        assert {c.name for c in s.cookies} == {f"c{i}" for i in range(8)}


def test_pickled_session_works_on_the_wire(server: ScriptedServer) -> None:
    with syncfetch.Session("5/s", max_concurrency=3, retry=1, timeout=7) as s:
        s.headers["X-Kept"] = "yes"
        s.get(server.url)
        copy = pickle.loads(pickle.dumps(s))
    with copy:
        assert (copy.max_concurrency, copy.retry.retries, copy.timeout) == (3, 1, 7)
        assert copy.get(server.url_for("/again")).status_code == 200
        assert copy.stats.attempts == 1
    assert server.records[-1].headers["X-Kept"] == "yes"


def test_elapsed_is_wire_time_not_waiting_time(server: ScriptedServer) -> None:
    with syncfetch.Session("1/s") as s:
        s.get(server.url)
        r = s.get(server.url)
    # The second call waited about a second for its token; elapsed is its wire time only.
    assert r.elapsed.total_seconds() < s.stats.token_wait - 0.2


def test_a_dropped_streamed_response_frees_its_slot(server: ScriptedServer) -> None:
    import gc

    server.script("/big", Step(body=b"x" * 100_000))
    with syncfetch.Session(max_concurrency=1, max_wait=0.5) as s:
        r = s.get(server.url_for("/big"), stream=True)
        r.raw.read(10)
        del r
        gc.collect()
        assert s.get(server.url_for("/next")).status_code == 200


def test_proxies_work_and_the_bucket_is_the_target_host(server: ScriptedServer) -> None:
    # The scripted server acts as a forward proxy: it sees the absolute URI.
    with syncfetch.Session("1/minute", max_wait=0) as s:
        r = s.get("http://upstream.test/x", proxies={"http": server.url})
        assert r.status_code == 200
        with pytest.raises(syncfetch.RateLimitExceeded) as info:
            s.get("http://upstream.test/y", proxies={"http": server.url})
    assert info.value.key == "http://upstream.test:80"
    assert server.records[0].path == "http://upstream.test/x"


def test_an_interrupted_attempt_gives_its_slot_back() -> None:
    from requests.adapters import BaseAdapter

    class Interrupting(BaseAdapter):
        def send(self, request: requests.PreparedRequest, **kw: Any) -> requests.Response:  # type: ignore[override]
            raise KeyboardInterrupt

        def close(self) -> None:
            pass

    with syncfetch.Session(max_concurrency=1, max_wait=0) as s:
        s.mount("boom://", Interrupting())
        for _ in range(2):
            with pytest.raises(KeyboardInterrupt):
                s.get("boom://x/")
        from tests._stub import CannedAdapter

        s.mount("ok://", CannedAdapter())
        assert s.get("ok://x/").status_code == 200  # the slot came back both times


def test_deadline_keeps_the_read_timeout_so_a_stalled_body_is_retried(
    server: ScriptedServer,
) -> None:
    server.script("/stall", Step(action="trickle", body=b"xx", trickle_interval=3), Step())
    policy = syncfetch.RetryPolicy(retries=2, deadline=20)
    with syncfetch.Session(retry=policy, timeout=(2, 0.5)) as s:
        assert s.get(server.url_for("/stall")).status_code == 200
    assert server.count("/stall") == 2


def test_urllib3_timeout_objects_work_with_a_deadline(server: ScriptedServer) -> None:
    from urllib3.util import Timeout

    with syncfetch.Session(retry=syncfetch.RetryPolicy(deadline=5)) as s:
        assert s.get(server.url, timeout=Timeout(connect=2, read=2)).status_code == 200


def test_close_ends_a_call_waiting_for_a_token(server: ScriptedServer) -> None:
    s = syncfetch.Session("1/minute")
    s.get(server.url)
    errors: list[BaseException] = []

    def wait_for_token() -> None:
        try:
            s.get(server.url)
        except BaseException as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait_for_token)
    waiter.start()
    time.sleep(0.3)  # the waiter is now sleeping for its token, a minute away
    s.close()
    waiter.join(10)
    assert not waiter.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], syncfetch.SessionClosed)
    assert server.count() == 1
    s.close()


def _noting_sends(s: syncfetch.Session) -> list[tuple[float | None, float]]:
    """Record (token.sent, settle time) for every token the session settles."""
    limiter: Any = s._pipeline.limiter
    seen: list[tuple[float | None, float]] = []
    settle = limiter.settle

    def noting(token: Any) -> None:
        seen.append((token.sent, time.monotonic()))
        settle(token)

    limiter.settle = noting
    return seen


def test_every_attempt_notes_when_its_request_left(server: ScriptedServer) -> None:
    server.script("/slow", Step(delay=0.3))
    server.script("/hop", Step(status=302, headers={"Location": "/slow"}))
    server.script("/flaky", Step(status=503), Step())
    with syncfetch.Session("100/s") as s:
        seen = _noting_sends(s)
        start = time.monotonic()
        s.get(server.url_for("/slow"))  # a new connection
        s.get(server.url_for("/slow"), stream=True).close()  # streamed, reused
        s.get(server.url_for("/hop"))  # a redirect: two attempts
        s.get(server.url_for("/flaky"))  # a retry: two attempts
        s.get("http://upstream.test/slow", proxies={"http": server.url})  # via a proxy
    assert len(seen) == 7
    for sent, settled in seen:
        assert sent is not None and start <= sent <= settled
    # Each send is noted before the response: 300 ms before it for the three answers
    # to /slow (the proxied path is the absolute URI, not scripted).
    slow = [settled - sent for sent, settled in seen if sent is not None]
    assert sum(1 for d in slow if d >= 0.3) == 3


def test_a_user_mounted_adapter_falls_back_to_the_response_time(server: ScriptedServer) -> None:
    with syncfetch.Session("100/s") as s:
        s.mount("http://", requests.adapters.HTTPAdapter())
        seen = _noting_sends(s)
        s.get(server.url_for("/x"))
    assert [sent for sent, _ in seen] == [None]


def test_a_slow_server_is_not_charged_to_the_limit(server: ScriptedServer) -> None:
    # Each answer 400 ms late, as usual for this server: once that is known (after the
    # first answer), a token is dated by its send (+ 10 ms), not by its answer.
    server.script("/slow", Step(delay=0.4))
    with syncfetch.Session("5/second") as s:
        seen = _noting_sends(s)
        s.get(server.url_for("/slow"))
        s.get(server.url_for("/slow"))
        limiter: Any = s._pipeline.limiter
        first, second = limiter._logs[f"http://127.0.0.1:{server.port}"].dates
    assert [settled - sent >= 0.4 for sent, settled in seen if sent] == [True, True]
    assert first >= seen[0][0] + 0.4  # nothing known yet: the answer dates it  # type: ignore[operator]
    # The second took about as long as the first: dated send + 10 ms, give or take
    # the difference between the two answer times.
    assert second - seen[1][0] < 0.010 + 0.1  # type: ignore[operator]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_https_attempts_note_their_send(tmp_path: Path) -> None:
    import ssl

    from syncfetch.testing._server import FakeConfig, FakeServer

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )

    httpd = FakeServer(FakeConfig())  # the fake API, over TLS
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    httpd.start()
    try:
        with syncfetch.Session("100/s") as s:
            seen = _noting_sends(s)
            url = f"https://127.0.0.1:{httpd.port}/"
            assert [s.get(url, verify=str(cert)).status_code for _ in range(2)] == [200, 200]
    finally:
        httpd.stop()
    assert len(seen) == 2 and all(sent is not None for sent, _ in seen)

"""Routes and costs on the SQLite store (issue 14): every charge of a call taken in one
transaction, all or nothing, each row weighing its cost, shared by processes.

Client processes are spawned (the test process runs server threads), each with its own
``syncfetch.Session`` on one SQLite file, against a strict ``FakeAPI`` in its own process.

Run as a script to print the per-call cost quoted in docs/many-processes.md (one process,
one thread, a limit that never binds)::

    python -m tests.test_sqlite_routes cost
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import syncfetch
from syncfetch import RateLimitExceeded, Route, SessionClosed
from syncfetch._stores.base import Charge, Token
from syncfetch._stores.shared import _FallbackHandle
from syncfetch._stores.sqlite import SQLiteLimiter
from syncfetch.testing import FakeAPI
from tests._server import ScriptedServer

StartAPI = Callable[..., FakeAPI]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "l.db"


@pytest.fixture
def limiters(db: Path) -> Iterator[Callable[..., SQLiteLimiter]]:
    """Make limiters on one file, each one more "process" (its own connection), with no
    rates of their own (as with a route mapping); all closed after the test."""
    made: list[SQLiteLimiter] = []

    def make(**kwargs: Any) -> SQLiteLimiter:
        limiter = SQLiteLimiter(db, [], **kwargs)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        limiter.close()


def _rows(path: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _weights(path: Path) -> dict[str, int]:
    """Tokens per key in the log (each row weighs its cost)."""
    return dict(_rows(path, "SELECT key, sum(cost) FROM syncfetch_log GROUP BY key"))  # type: ignore[arg-type]


def _now() -> float:
    return time.monotonic()


A = ("a", ((2, 60_000),))  # a key and its windows, (limit, ms)
B = ("b", ((10, 60_000),))


def charge(bucket: tuple[str, tuple[tuple[int, int], ...]], cost: int = 1) -> Charge:
    return Charge(bucket[0], bucket[1], cost)


# -- one file, several limiters ---------------------------------------------------------


def test_all_or_nothing_one_full_bucket_charges_none_of_the_others(
    limiters: Callable[..., SQLiteLimiter], db: Path
) -> None:
    a, other = limiters(), limiters()
    a.settle(a.take("k", [charge(A, 2)], None))  # a is full for a minute
    before = _weights(db)
    with pytest.raises(RateLimitExceeded) as info:
        other.take("k", [charge(B, 3), charge(A)], _now() + 0.5)
    assert info.value.key == "a" and 59 < (info.value.retry_after or 0) <= 60.1
    assert _weights(db) == before == {"a": 2}  # nothing taken from b
    other.take("k", [charge(B, 10)], _now())  # b had all its room


@pytest.fixture(params=[True, False], ids=["window-functions", "summed-in-python"])
def window_functions(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """With SQLite's window functions, and without (SQLite < 3.25)."""
    monkeypatch.setattr("syncfetch._stores.sqlite._WINDOW_FUNCTIONS", request.param)


@pytest.mark.usefixtures("window_functions")
def test_costs_are_summed_in_each_window_one_row_per_charge(
    limiters: Callable[..., SQLiteLimiter], db: Path
) -> None:
    a, b = limiters(), limiters()
    bucket = ("g", ((10, 60_000), (4, 300)))  # 10 a minute, 4 in 300 ms
    a.settle(a.take("k", [charge(bucket, 3)], _now()))
    with pytest.raises(RateLimitExceeded) as info:
        b.take("k", [charge(bucket, 2)], _now())  # 3 + 2 > 4 in 300 ms
    assert 0.2 < (info.value.retry_after or 0) <= 0.31
    b.settle(b.take("k", [charge(bucket, 1)], _now()))  # 3 + 1 fits
    time.sleep(0.35)
    b.settle(b.take("k", [charge(bucket, 4)], _now()))  # 8 in the minute
    time.sleep(0.35)
    with pytest.raises(RateLimitExceeded) as info:
        a.take("k", [charge(bucket, 3)], _now())  # 8 + 3 > 10 in the minute
    assert (info.value.retry_after or 0) > 59
    a.settle(a.take("k", [charge(bucket, 2)], _now()))
    assert _rows(db, "SELECT cost FROM syncfetch_log ORDER BY id") == [(3,), (1,), (4,), (2,)]


@pytest.mark.usefixtures("window_functions")
def test_correct_up_and_down_before_and_after_settle_for_every_process(
    limiters: Callable[..., SQLiteLimiter], db: Path
) -> None:
    a, b = limiters(), limiters()
    bucket = ("q", ((10, 60_000),))
    token = a.take("k", [charge(bucket, 5), charge(B)], None)
    a.correct(token, "q", 2)  # before settle: 2 of 10 used
    a.correct(token, "elsewhere", 7)  # not charged by this token: ignored
    b.settle(b.take("k", [charge(bucket, 8)], _now()))  # 2 + 8 fits
    token.sent = token.answered = time.monotonic()
    a.settle(token)
    a.correct(token, "q", 5)  # after settle, up, past the limit: 13 of 10
    assert _weights(db) == {"q": 13, "b": 1}
    with pytest.raises(RateLimitExceeded):
        b.take("k", [charge(bucket, 1)], _now())
    a.correct(token, "q", 0)  # a refund: 8 of 10
    b.take("k", [charge(bucket, 2)], _now())
    with pytest.raises(RateLimitExceeded):
        b.take("k", [charge(bucket, 1)], _now())
    assert _weights(db) == {"q": 10, "b": 1}


def test_a_plain_tokens_charge_can_be_corrected_and_weighs_in_the_plain_path(
    db: Path,
) -> None:
    from pyrate_limiter import Rate

    a, b = SQLiteLimiter(db, [Rate(3, 60_000)]), SQLiteLimiter(db, [Rate(3, 60_000)])
    try:
        token = a.acquire("k", None)  # the one-token path, counting rows
        a.correct(token, "k", 3)
        a.settle(token)
        with pytest.raises(RateLimitExceeded):
            b.acquire("k", _now())  # counted by weight now: full
        a.correct(token, "k", 1)
        b.acquire("k", _now())
        b.acquire("k", _now())
        # A cost taken in a session with plain limits weighs in its one-token calls.
        with pytest.raises(RateLimitExceeded):
            b.take("k", [Charge("k", ((3, 60_000),), 2)], _now())
    finally:
        a.close()
        b.close()


def test_unsettled_costs_count_as_now_for_another_limiter(
    limiters: Callable[..., SQLiteLimiter],
) -> None:
    a, b = limiters(), limiters()
    bucket = ("u", ((3, 300),))
    token = a.take("k", [charge(bucket, 3)], None)
    time.sleep(0.4)  # longer than the window, its request not even sent
    with pytest.raises(RateLimitExceeded):
        b.take("k", [charge(bucket)], _now())
    token.sent = time.monotonic()
    assert token.on_sent is not None
    token.on_sent(token)  # sent now: dated by its send, still in the window
    with pytest.raises(RateLimitExceeded) as info:
        b.take("k", [charge(bucket)], _now())
    assert 0.2 < (info.value.retry_after or 0) <= 0.32
    b.take("k", [charge(bucket, 3)], _now() + 1.0)  # free a window after the send


def test_rows_expire_after_their_own_charges_longest_window(
    limiters: Callable[..., SQLiteLimiter], db: Path
) -> None:
    a = limiters(sweep_every=0.1)
    hour = ("h", ((5, 3_600_000),))
    short = ("s", ((5, 200),))
    token = a.take("k", [charge(hour, 2), charge(short, 2)], None)
    token.sent = token.answered = time.monotonic()
    a.settle(token)
    assert len({row[0] for row in _rows(db, "SELECT ts FROM syncfetch_log")}) == 1
    assert dict(_rows(db, "SELECT key, exp - ts FROM syncfetch_log")) == {
        "h": 3_600_000,
        "s": 200,
    }
    time.sleep(0.3)
    a.sweep()
    assert _weights(db) == {"h": 2}  # the short window's row is gone, the hour's kept
    with pytest.raises(RateLimitExceeded) as info:
        a.take("k", [charge(hour, 4)], _now())
    assert (info.value.retry_after or 0) > 3590


def test_max_wait_refuses_at_once_and_takes_nothing(
    limiters: Callable[..., SQLiteLimiter], db: Path
) -> None:
    a = limiters()
    slow = ("m", ((1, 2000),))
    a.take("k", [charge(slow)], None)
    start = time.monotonic()
    with pytest.raises(RateLimitExceeded):
        a.take("k", [charge(B, 4), charge(slow)], start + 1.0)  # 2 s needed
    assert time.monotonic() - start < 0.5
    assert _weights(db) == {"m": 1}


def test_a_pause_of_any_charged_key_blocks_the_take(
    limiters: Callable[..., SQLiteLimiter], db: Path
) -> None:
    a, b = limiters(), limiters()
    a.pause("b", 30)
    with pytest.raises(RateLimitExceeded) as info:
        b.take("k", [charge(A), charge(B)], _now() + 1)
    assert info.value.key == "b" and 29 < (info.value.retry_after or 0) <= 30
    assert _weights(db) == {}


def test_close_ends_a_wait_for_a_route(server: ScriptedServer, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'l.db'}"
    session = syncfetch.Session(limits={server.url + "/search/": "1/minute"}, store=store)
    assert session.get(server.url_for("/search/a")).status_code == 200
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            session.get(server.url_for("/search/b"))
        except BaseException as exc:  # reported to the test
            outcome.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.3)
    start = time.monotonic()
    session.close()
    waiter.join(5)
    assert not waiter.is_alive() and time.monotonic() - start < 2
    assert len(outcome) == 1 and isinstance(outcome[0], SessionClosed), outcome
    assert server.count("/search/b") == 0


def test_fallback_when_the_file_is_locked_mid_run_then_costs_replayed_as_one_row(
    limiters: Callable[..., SQLiteLimiter], db: Path
) -> None:
    a = limiters(on_backend_error="fallback", busy_timeout=0.2)
    bucket = ("f", ((5, 10_000),))
    a.settle(a.take("k", [charge(bucket)], None))  # the file exists, 1 of 5 used
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        token = a.take("k", [charge(bucket, 3)], None)
        assert isinstance(token.handle, _FallbackHandle) and a.backend_down()
        with pytest.raises(RateLimitExceeded):  # the fallback counts both: 4 of 5
            a.take("k", [charge(bucket, 2)], _now())
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    time.sleep(1.1)  # the next probe of the file
    a.take("k", [charge(bucket)], _now())
    assert not a.backend_down()
    # The outage's 3 tokens were written back as one row of cost 3: 5 of 5 used.
    assert _rows(db, "SELECT cost FROM syncfetch_log ORDER BY id") == [(1,), (3,), (1,)]
    with pytest.raises(RateLimitExceeded):
        limiters().take("k", [charge(bucket)], _now())


def test_a_file_of_an_earlier_version_gets_the_cost_column(db: Path) -> None:
    old = sqlite3.connect(db, isolation_level=None)
    old.execute(
        "CREATE TABLE syncfetch_log (id INTEGER PRIMARY KEY, key TEXT NOT NULL,"
        " ts INTEGER NOT NULL, exp INTEGER NOT NULL, hold INTEGER NOT NULL DEFAULT 0)"
    )
    now = int(time.time() * 1000)
    old.execute("INSERT INTO syncfetch_log (key, ts, exp) VALUES ('k', ?, ?)", (now, now + 60_000))
    old.close()
    limiter = SQLiteLimiter(db, [])
    try:
        with pytest.raises(RateLimitExceeded):  # the old row weighs 1
            limiter.take("k", [Charge("k", ((2, 60_000),), 2)], _now())
        limiter.take("k", [Charge("k", ((2, 60_000),), 1)], _now())
    finally:
        limiter.close()


# -- the queue of calls waiting for routes and costs ----------------------------------------


def _settled(limiter: SQLiteLimiter, token: Token) -> None:
    """Settle ``token`` as sent and answered now."""
    token.sent = token.answered = time.monotonic()
    limiter.settle(token)


def _serve_in_order(
    bucket: tuple[str, tuple[tuple[int, int], ...]],
    waiters: list[tuple[float, SQLiteLimiter, str, int, int]],
) -> list[str]:
    """Start each waiter ``(after s, limiter, name, cost, priority)`` on ``bucket``; the
    names in the order they got their tokens."""
    lock = threading.Lock()  # guards order
    order: list[str] = []

    def wait(limiter: SQLiteLimiter, name: str, cost: int, priority: int) -> None:
        _settled(limiter, limiter.take("k", [charge(bucket, cost)], _now() + 10, priority))
        with lock:
            order.append(name)

    threads = []
    start = time.monotonic()
    for after, limiter, name, cost, priority in waiters:
        time.sleep(max(0.0, start + after - time.monotonic()))
        thread = threading.Thread(target=wait, args=(limiter, name, cost, priority))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(15)
    return order


@pytest.mark.slow
def test_waiters_are_served_by_priority_aged_by_their_wait_across_limiters(
    limiters: Callable[..., SQLiteLimiter], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("syncfetch._stores.base.AGING", 0.1)  # +1 per 100 ms of waiting
    first, other = limiters(), limiters()
    bucket = ("p", ((1, 1000),))
    _settled(first, first.take("k", [charge(bucket)], None))  # full for a second
    order = _serve_in_order(
        bucket,
        [
            (0.0, first, "low", 1, 0),
            # 300 ms later: 3 higher than the low one's 0 by then, 2 is not
            (0.3, other, "aged-out", 1, 2),
            (0.3, other, "high", 1, 5),
        ],
    )
    assert order == ["high", "low", "aged-out"]


@pytest.mark.slow
def test_a_big_cost_is_not_overtaken_by_a_later_small_one_of_its_priority(
    limiters: Callable[..., SQLiteLimiter],
) -> None:
    a, b = limiters(), limiters()
    bucket = ("c", ((2, 600),))
    _settled(a, a.take("k", [charge(bucket)], None))
    time.sleep(0.3)
    _settled(a, a.take("k", [charge(bucket)], None))  # one place frees in 300 ms, both in 600
    order = _serve_in_order(bucket, [(0.0, a, "big", 2, 0), (0.1, b, "small", 1, 0)])
    assert order == ["big", "small"]


# -- processes against a strict server ------------------------------------------------------


def routes_client(
    store: str,
    mode: str,
    url: str,
    jobs: list[tuple[str, str, int]],
    threads: int,
    barrier: Any,
    results: Any,
) -> None:
    """Body of a client process: ``jobs`` (method, path, cost) from ``threads`` threads."""
    unexpected: list[str] = []
    statuses: list[int] = []
    try:
        if mode == "routes":
            limits: Any = {url: "40/second", url + "/search/": "10/second"}
        elif mode == "cost":
            limits = "50/second"
        else:  # "settle": 5 taken up front, corrected to the 2 the server charges
            limits = {url: Route("20/second", cost=5, settle=lambda r: 2)}
        session = syncfetch.Session(limits=limits, store=store, max_concurrency=threads)
        session._pipeline.limiter.paused_for("http://warm-up.invalid:80")  # connect first
        lock = threading.Lock()  # guards jobs, statuses and unexpected
        todo = list(jobs)

        def worker() -> None:
            while True:
                with lock:
                    if not todo:
                        return
                    method, path, cost = todo.pop()
                try:
                    status = session.request(method, url + path, cost=cost).status_code
                except Exception as exc:
                    with lock:
                        unexpected.append(repr(exc))
                else:
                    with lock:
                        statuses.append(status)

        barrier.wait(60)
        pool = [threading.Thread(target=worker) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        session.close()
    except Exception as exc:  # reported to the parent, which fails the test
        unexpected.append(repr(exc))
    results.put((statuses, unexpected))


def run_processes(
    store: str, mode: str, url: str, jobs: list[tuple[str, str, int]], processes: int
) -> list[int]:
    """Run ``processes`` clients together, each doing ``jobs``; their statuses."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=routes_client,
            args=(store, mode, url, jobs, 6, barrier, results),
            daemon=True,
        )
        for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    statuses: list[int] = []
    try:
        barrier.wait(60)
        for _ in procs:
            got, unexpected = results.get(timeout=60)
            assert unexpected == []
            statuses += got
    finally:
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
    assert len(statuses) == processes * len(jobs)
    return statuses


@pytest.mark.slow
def test_four_processes_share_an_origin_and_a_search_route_both_reached_no_429(
    fake_api: StartAPI, tmp_path: Path
) -> None:
    api = fake_api("40/second", routes={"/search/": "10/second"})
    jobs = [("GET", f"/search/q{i}", 1) for i in range(12)]
    jobs += [("GET", f"/users/{i}", 1) for i in range(24)]
    store = f"sqlite:///{tmp_path / 'l.db'}"
    statuses = run_processes(store, "routes", api.url, jobs, 4)
    assert statuses.count(429) == 0 and api.count(429) == 0 and set(statuses) == {200}
    search = [a.at for a in api.arrivals("/search/*")]
    assert len(search) == 48 and api.max_in_window(1.0, "/search/*") == 10
    # The binding route's limit reached: 48 within 4 windows of 10 and a bit.
    assert len(search) >= 0.8 * 10 * (search[-1] - search[0])
    assert api.max_in_window(1.0) <= 40


@pytest.mark.slow
def test_costs_across_processes_never_exceed_the_weighed_limit(
    fake_api: StartAPI, tmp_path: Path
) -> None:
    # Calls of cost 5 and plain one-token calls (the row-counting path) share a plain
    # 50/s limit: the server, weighing each, sees no excess.
    api = fake_api(cost_limits="50/second", costs={"/graphql": 5})
    jobs = [("POST", "/graphql", 5)] * 12 + [("GET", f"/x/{i}", 1) for i in range(20)]
    store = f"sqlite:///{tmp_path / 'l.db'}"
    statuses = run_processes(store, "cost", api.url, jobs, 3)
    assert statuses.count(429) == 0 and api.count(429) == 0
    weights = [(a.at, a.cost) for a in api.arrivals()]
    assert sorted({cost for _, cost in weights}) == [1, 5]
    most = max(sum(c for t, c in weights if start <= t < start + 1.0) for start, _ in weights)
    assert 40 <= most <= 50


@pytest.mark.slow
def test_settle_corrects_the_estimate_for_every_process(fake_api: StartAPI, tmp_path: Path) -> None:
    # Each call takes 5 up front and is corrected to the 2 the server charges: with the
    # corrections shared, the processes together pass more than the 4 calls a second the
    # estimate alone allows, and never the server's 10.
    api = fake_api(cost_limits="20/second", costs={"/q": 2})
    jobs = [("GET", f"/q?{i}", 1) for i in range(15)]
    store = f"sqlite:///{tmp_path / 'l.db'}"
    statuses = run_processes(store, "settle", api.url, jobs, 2)
    assert statuses.count(429) == 0 and api.count(429) == 0
    assert 6 <= api.max_in_window(1.0) <= 10


# -- measurement -------------------------------------------------------------------------------


def _measure_cost(calls: int = 2000) -> None:
    """Per-call cost of the single-key path and of takes with costs and routes, one
    process, one thread, under limits that never bind; and transactions per call."""
    import tempfile

    from pyrate_limiter import Rate

    plain = Charge("http://bench.example:80", ((10**6, 1000),), 1)
    cases: dict[str, list[Charge] | None] = {
        "acquire (one token, plain limits)": None,
        "take, one charge of cost 5": [plain._replace(cost=5)],
        "take, origin + route (2 charges)": [
            plain,
            Charge("http://bench.example:80/search/", ((10**6, 1000),), 1),
        ],
    }
    for name, charges in cases.items():
        runs = []
        for _ in range(5):
            with tempfile.TemporaryDirectory() as tmp:
                limiter = SQLiteLimiter(tmp + "/l.db", [Rate(10**6, 1000)])
                transactions = 0
                opened = limiter._transaction

                def counted(opened: Any = opened) -> Any:
                    nonlocal transactions
                    transactions += 1
                    return opened()

                limiter._transaction = counted  # type: ignore[method-assign]
                key = plain.key
                start = time.perf_counter()
                for _ in range(calls):
                    token = (
                        limiter.acquire(key, None)
                        if charges is None
                        else limiter.take(key, charges, None)
                    )
                    limiter.settle(token)
                runs.append((time.perf_counter() - start) / calls * 1e6)
                limiter.close()
        runs.sort()
        print(
            f"{name}: take+settle median of 5 runs {runs[2]:.0f} us per call "
            f"(runs {runs[0]:.0f}-{runs[-1]:.0f}), {transactions / calls:.2f} transactions per call"
        )


def contended_main(path: str, mode: str, seconds: float, barrier: Any, results: Any) -> None:
    """Body of a process taking tokens from 8 threads for ``seconds`` under a binding
    limit of 40/s: ``acquire`` (the single-key path), ``take1`` (one charge through
    ``_take_many``) or ``take2`` (40/s origin + 10/s route); reports (tokens, transactions)."""
    from pyrate_limiter import Rate

    origin = Charge("http://bench.example:80", ((40, 1000),), 1)
    route = Charge("http://bench.example:80/search/", ((10, 1000),), 1)
    limiter = SQLiteLimiter(path, [Rate(40, 1000)] if mode == "acquire" else [])
    charges = [origin] if mode == "take1" else [origin, route]
    lock = threading.Lock()  # guards counts
    counts = [0, 0]  # tokens, transactions
    opened = limiter._transaction

    def counted() -> Any:
        with lock:
            counts[1] += 1
        return opened()

    limiter._transaction = counted  # type: ignore[method-assign]
    limiter.paused_for(origin.key)
    barrier.wait(60)
    end = time.monotonic() + seconds

    def worker() -> None:
        while True:
            deadline = end - time.monotonic()
            if deadline <= 0:
                return
            try:
                if mode == "acquire":
                    token = limiter.acquire(origin.key, end)
                else:
                    token = limiter.take(origin.key, charges, end)
            except RateLimitExceeded:
                return
            token.sent = token.answered = time.monotonic()
            limiter.settle(token)
            with lock:
                counts[0] += 1

    pool = [threading.Thread(target=worker) for _ in range(8)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    limiter.close()
    results.put(tuple(counts))


def _measure_contended(seconds: float = 4.0) -> None:
    """Transactions per token, 4 processes x 8 threads under a binding limit."""
    import tempfile

    ctx = multiprocessing.get_context("spawn")
    for mode in ("acquire", "take1", "take2"):
        with tempfile.TemporaryDirectory() as tmp:
            barrier = ctx.Barrier(5)
            results = ctx.Queue()
            procs = [
                ctx.Process(
                    target=contended_main, args=(tmp + "/l.db", mode, seconds, barrier, results)
                )
                for _ in range(4)
            ]
            for proc in procs:
                proc.start()
            barrier.wait(60)
            got = [results.get(timeout=60) for _ in procs]
            for proc in procs:
                proc.join(10)
        tokens = sum(t for t, _ in got)
        transactions = sum(n for _, n in got)
        print(
            f"{mode}: 4 processes x 8 threads, {seconds:g} s: {tokens} tokens "
            f"(per process {sorted(t for t, _ in got)}), "
            f"{(transactions - tokens) / tokens:.2f} transactions per token (settles excluded)"
        )


if __name__ == "__main__":
    if sys.argv[1:] == ["cost"]:
        _measure_cost()
    elif sys.argv[1:] == ["contended"]:
        _measure_contended()
    else:
        print(__doc__)

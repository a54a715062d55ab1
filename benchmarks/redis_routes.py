"""Cost of a route take on the Redis store next to a plain one-token acquire (issue 14).

Against a throwaway ``redis-server`` on 127.0.0.1 (tests/_redis.py), one process:

- uncontended: microseconds per call (mean of 2000) of ``acquire`` (one token of the
  session's rates, the path of plain calls), of ``take`` with one charge of cost 1 under
  other windows, of cost 5 (a weighted bucket, read whole: it holds 2000+ entries here),
  and of 3 routes of one origin; each then settled;
- contended: 8 threads taking 120 tokens at 40/s, the script calls per token.

Run: ``python3 benchmarks/redis_routes.py`` (about 15 s; needs redis-server).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pyrate_limiter import Rate

from syncfetch._stores.base import Charge, Token
from syncfetch._stores.redis import RedisLimiter
from tests._redis import RedisServer

ORIGIN = "http://a.test:80"
BIG = ((1_000_000, 1000),)


def settle(lim: RedisLimiter, token: Token) -> None:
    token.sent = token.answered = time.monotonic()
    lim.settle(token)


def uncontended(url: str, calls: int = 2000) -> None:
    lim = RedisLimiter(url, [Rate(1_000_000, 1000)], prefix="bench-u")
    o = ORIGIN
    cases: dict[str, Callable[[], Token]] = {
        "acquire (one key)": lambda: lim.acquire(o, None),
        "take, 1 key, cost 1": lambda: lim.take(o, [Charge(o, ((999_999, 1000),), 1)], None),
        "take, 1 key, cost 5": lambda: lim.take(o + "/c", [Charge(o + "/c", BIG, 5)], None),
        "take, 3 routes": lambda: lim.take(
            o,
            [Charge(o, BIG, 1), Charge(o + "/s", BIG, 1), Charge("POST " + o + "/x", BIG, 1)],
            None,
        ),
    }
    for name, call in cases.items():
        for _ in range(200):
            settle(lim, call())
        start = time.perf_counter()
        tokens = [call() for _ in range(calls)]
        took = (time.perf_counter() - start) / calls * 1e6
        start = time.perf_counter()
        for token in tokens:
            settle(lim, token)
        settled = (time.perf_counter() - start) / calls * 1e6
        print(f"{name:22} take {took:5.0f} us/call, settle {settled:4.0f} us/call")
    lim.close()


def contended(url: str, mode: str, tokens: int = 120, threads: int = 8) -> None:
    lim = RedisLimiter(url, [Rate(40, 1000)], prefix="bench-" + mode.replace(" ", "-"))
    calls = [0]
    for attr in ("_acquire_script", "_take_many_script"):
        script = getattr(lim, attr)

        def counted(*args: Any, _script: Any = script, **kwargs: Any) -> Any:
            calls[0] += 1
            return _script(*args, **kwargs)

        setattr(lim, attr, counted)
    left = [tokens]
    lock = threading.Lock()  # guards left
    w40 = ((40, 1000),)

    def work() -> None:
        while True:
            with lock:
                if not left[0]:
                    return
                left[0] -= 1
            if mode == "acquire":
                token = lim.acquire(ORIGIN, None)
            elif mode == "take 1 route":
                token = lim.take(ORIGIN, [Charge(ORIGIN + "/r", w40, 1)], None)
            else:
                charges = [Charge(ORIGIN, ((400, 1000),), 1), Charge(ORIGIN + "/r", w40, 1)]
                token = lim.take(ORIGIN, charges, None)
            settle(lim, token)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    start = time.monotonic()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    print(
        f"{mode:22} {tokens} tokens at 40/s, {threads} threads: "
        f"{calls[0] / tokens:.2f} script calls per token, {time.monotonic() - start:.2f} s"
    )
    lim.close()


def main() -> None:
    with RedisServer() as srv:
        uncontended(srv.url)
        for mode in ("acquire", "take 1 route", "take 2 routes"):
            contended(srv.url, mode)


if __name__ == "__main__":
    main()

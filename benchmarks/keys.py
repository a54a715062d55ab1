"""Many hosts through one Redis: server memory and per-call cost (issue 16).

Against a throwaway ``redis-server`` (no persistence), one ``RedisLimiter`` at 5 per
``--window`` seconds per host takes one token (acquire + settle) for each of ``--hosts``
distinct hosts, from 4 threads. Printed:

- Redis ``INFO memory`` ``used_memory`` and ``DBSIZE`` before, after 1,000 hosts, after all
  of them, and once every key has expired (a window after its last use, plus the settle
  cap) - the memory stays bounded;
- acquire + settle p50/p99 (one thread, 2,000 calls over 1,000 fresh hosts) with 1,000
  hosts' keys in Redis, then with all of them - the cost does not grow with the hosts.

Run: ``python3 benchmarks/keys.py`` (100,000 hosts, 30 s window; about 1.5 minutes on 2 cores), or
``--hosts 20000 --window 10`` for a quick look.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import redis
from pyrate_limiter import Rate

from syncfetch._stores.redis import RedisLimiter
from tests._redis import RedisServer


def state(client: redis.Redis) -> tuple[int, int]:
    """(used_memory in bytes, number of keys)."""
    return int(client.info("memory")["used_memory"]), int(client.dbsize())


def take_all(limiter: RedisLimiter, hosts: list[str], threads: int = 4) -> float:
    """One token per host from ``threads`` threads; returns the seconds taken."""
    start = time.perf_counter()

    def work(part: list[str]) -> None:
        for host in part:
            limiter.settle(limiter.acquire(host, None))

    pool = [threading.Thread(target=work, args=(hosts[i::threads],)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return time.perf_counter() - start


def cost(limiter: RedisLimiter, tag: str, calls: int = 2000) -> tuple[float, float]:
    """acquire + settle p50 and p99 (µs), one thread, over 1,000 hosts not seen before."""
    times = []
    for i in range(calls):
        host = f"https://{tag}-{i % 1000}.example:443"
        start = time.perf_counter()
        limiter.settle(limiter.acquire(host, None))
        times.append(time.perf_counter() - start)
    times.sort()
    return statistics.median(times) * 1e6, times[int(len(times) * 0.99)] * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=100_000)
    parser.add_argument("--window", type=float, default=30.0, help="seconds (rate 5/window)")
    args = parser.parse_args()
    window_ms = int(args.window * 1000)
    rows: list[tuple[str, str]] = []
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        limiter = RedisLimiter(server.url, [Rate(5, window_ms)])
        mem0, keys0 = state(client)
        rows.append(("empty Redis", f"used_memory {mem0 / 1e6:.2f} MB, {keys0} keys"))
        first = [f"https://h{i}.example:443" for i in range(1000)]
        take_all(limiter, first)
        mem1, keys1 = state(client)
        p50, p99 = cost(limiter, "small")
        rows.append(
            (
                "1,000 hosts",
                f"used_memory {mem1 / 1e6:.2f} MB, {keys1} keys; "
                f"acquire+settle p50 {p50:.0f} us, p99 {p99:.0f} us",
            )
        )
        rest = [f"https://h{i}.example:443" for i in range(1000, args.hosts)]
        took = take_all(limiter, rest)
        last_use = time.monotonic()
        mem2, keys2 = state(client)
        p50b, p99b = cost(limiter, "large")
        per_host = (mem2 - mem0) / args.hosts
        rows.append(
            (
                f"{args.hosts:,} hosts",
                f"used_memory {mem2 / 1e6:.2f} MB, {keys2} keys ({per_host:.0f} B per host); "
                f"acquire+settle p50 {p50b:.0f} us, p99 {p99b:.0f} us; "
                f"{len(rest) / took:.0f} hosts/s loading from 4 threads",
            )
        )
        # Every key expires a window (plus the settle cap) after its last use; Redis
        # removes expired keys in the background, so poll for a while.
        time.sleep(max(0.0, last_use + args.window + 0.2 - time.monotonic()))
        end = time.monotonic() + 60
        while state(client)[1] > 1 and time.monotonic() < end:
            time.sleep(0.5)
        waited = time.monotonic() - last_use
        mem3, keys3 = state(client)
        rows.append(
            (
                f"{waited:.0f} s after the last use",
                f"used_memory {mem3 / 1e6:.2f} MB, {keys3} keys "
                f"({', '.join(k.decode() for k in client.keys('*')[:3])})",
            )
        )
        limiter.close()
        client.close()
    print(f"RedisLimiter, rate 5/{args.window:g} s per host, redis-server on 127.0.0.1")
    for name, text in rows:
        print(f"  {name}: {text}")


if __name__ == "__main__":
    main()

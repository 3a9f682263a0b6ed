"""The baseline for Redis throughput: the same reads a Pillion GET makes, straight from redis-py
asyncio at a fixed concurrency, no HTTP in between. Prints operations per second."""

from __future__ import annotations

import asyncio
import sys
import time

import redis.asyncio as aioredis
import uvloop


async def run(url: str, key: str, concurrency: int, seconds: float) -> float:
    client = aioredis.Redis.from_url(url, max_connections=concurrency)
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            async with client.pipeline(transaction=False) as pipe:
                pipe.hmget(key, "data", "version")
                pipe.pttl(key)
                await pipe.execute()
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    await client.aclose()
    return done / elapsed


def main() -> None:
    url, key, concurrency, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        print(f"{runner.run(run(url, key, concurrency, seconds)):.1f}")


if __name__ == "__main__":
    main()

"""The baseline for Redis throughput: the same read a Pillion GET makes (state.redis's read
script), straight from redis-py asyncio at a fixed concurrency, no HTTP in between. Prints
operations per second."""

from __future__ import annotations

import asyncio
import sys
import time

import redis.asyncio as aioredis
import uvloop

from components.state.redis import _READ_SCRIPT


async def run(url: str, key: str, concurrency: int, seconds: float) -> float:
    client = aioredis.Redis.from_url(url, max_connections=concurrency)
    read = client.register_script(_READ_SCRIPT)
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await read(keys=[key])
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

"""Lock/unlock pairs per second at a fixed concurrency, through a sidecar or straight at Redis.

    python -m bench.lock_direct http SIDECAR_URL CONCURRENCY SECONDS
    python -m bench.lock_direct redis REDIS_URL CONCURRENCY SECONDS

Each worker takes its own resource and releases it, over and over. ``http`` posts the alpha lock
API over keep-alive connections; ``redis`` runs what lock.redis runs (``SET key owner NX EX``, then
its owner-checked Lua unlock) from redis-py asyncio. Prints pairs per second.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import uvloop

from components.lock.redis import _UNLOCK_SCRIPT
from tests.rawhttp import RawConnection

Pair = Callable[[int], Awaitable[None]]


async def _timed(concurrency: int, seconds: float, pair: Pair) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(n: int) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await pair(n)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return done / (time.perf_counter() - start)


async def through_sidecar(url: str, concurrency: int, seconds: float) -> float:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    pool = [await RawConnection.open(parts.hostname, parts.port) for _ in range(concurrency)]

    async def pair(n: int) -> None:
        body = json.dumps({"resourceId": f"bench-{n}", "lockOwner": f"w{n}", "expiryInSeconds": 30}).encode()
        taken = await pool[n].request("POST", "/v1.0-alpha1/lock/lockstore", body)
        released = await pool[n].request(
            "POST",
            "/v1.0-alpha1/unlock/lockstore",
            json.dumps({"resourceId": f"bench-{n}", "lockOwner": f"w{n}"}).encode(),
        )
        if taken.json() != {"success": True} or released.json() != {"status": 0}:
            raise RuntimeError(f"unexpected answers {taken.json()} {released.json()}")

    try:
        return await _timed(concurrency, seconds, pair)
    finally:
        for connection in pool:
            await connection.close()


async def straight_at_redis(url: str, concurrency: int, seconds: float) -> float:
    client = aioredis.Redis.from_url(url, max_connections=concurrency)
    unlock = client.register_script(_UNLOCK_SCRIPT)

    async def pair(n: int) -> None:
        key, owner = f"lock||direct||bench-{n}", f"w{n}"
        if not await client.set(key, owner, nx=True, ex=30) or await unlock(keys=[key], args=[owner]) != 0:
            raise RuntimeError("the direct lock/unlock pair failed")

    try:
        return await _timed(concurrency, seconds, pair)
    finally:
        await client.aclose()


def main() -> None:
    mode, url, concurrency, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    run = through_sidecar if mode == "http" else straight_at_redis
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        print(f"{runner.run(run(url, concurrency, seconds)):.1f}")


if __name__ == "__main__":
    main()

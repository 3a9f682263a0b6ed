"""The baseline for PostgreSQL throughput: the SELECT a Pillion GET makes on ``state.postgresql``,
from asyncpg directly at a fixed concurrency, through a pool made as the component makes it (same
size, same statement cache). Prints operations per second.

    python -m bench.postgres_direct POSTGRES_URL KEY CONCURRENCY SECONDS
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import uvloop

from components.base import ComponentContext
from components.postgresql_common import PostgresSettings, create_pool
from components.state.postgresql import PostgreSQLStateStore


async def run(url: str, key: str, concurrency: int, seconds: float) -> float:
    metadata = PostgreSQLStateStore.schema.parse({"connectionString": url})
    store = PostgreSQLStateStore(metadata, ComponentContext("statestore", "bench", Path(), Path()))
    sql = store._sql_get
    pool = await create_pool(PostgresSettings.from_metadata(metadata))
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            if await pool.fetchrow(sql, key) is None:
                raise RuntimeError(f"key {key!r} is not in the table")
            done += 1

    start = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await pool.close()
    return done / (time.perf_counter() - start)


def main() -> None:
    url, key, concurrency, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        print(f"{runner.run(run(url, key, concurrency, seconds)):.1f}")


if __name__ == "__main__":
    main()

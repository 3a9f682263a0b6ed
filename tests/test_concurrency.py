"""16 clients increment one counter through ETag retries: no increment may be lost (issue 7)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.rawhttp import RawConnection
from tests.state_support import SERVICE_FIXTURES, STORES, component, redis_metadata
from tests.support import SidecarProcess, start_sidecar

CLIENTS = 16
TOTAL = 2000


async def increment(conn: RawConnection, key: str) -> int:
    """One increment with optimistic concurrency; returns how many tries it took."""
    tries = 0
    while True:
        tries += 1
        current = await conn.request("GET", f"/v1.0/state/statestore/{key}")
        if current.status == 200:
            item = {"key": key, "value": current.json() + 1, "etag": current.headers["etag"]}
        else:
            item = {"key": key, "value": 1, "options": {"concurrency": "first-write"}}
        saved = await conn.request("POST", "/v1.0/state/statestore", json.dumps([item]).encode())
        if saved.status == 204:
            return tries
        assert saved.status == 409, saved.body
        # Jittered backoff, as a real client would: without it 16 clients mostly collide.
        await asyncio.sleep(random.uniform(0, 0.001 * min(tries, 8)))


async def hammer(ports: list[int], key: str) -> int:
    async def worker(n: int) -> int:
        conn = await RawConnection.open("127.0.0.1", ports[n % len(ports)])
        try:
            return sum([await increment(conn, key) for _ in range(TOTAL // CLIENTS)])
        finally:
            await conn.close()

    return sum(await asyncio.gather(*(worker(n) for n in range(CLIENTS))))


def final_value(base: str, key: str) -> int:
    value: int = httpx.get(f"{base}/v1.0/state/statestore/{key}").json()
    return value


@pytest.fixture(params=sorted(STORES))
def sidecar(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SidecarProcess]:
    kind: str = request.param
    fixture = SERVICE_FIXTURES.get(kind)
    url = request.getfixturevalue(fixture) if fixture else ""
    proc = start_sidecar(tmp_path, resources={"s.yaml": STORES[kind]("statestore", tmp_path, url)})
    yield proc
    proc.stop()


def test_concurrent_increments_lose_nothing(sidecar: SidecarProcess) -> None:
    tries = asyncio.run(hammer([sidecar.port], "counter"))
    assert final_value(sidecar.url, "counter") == TOTAL
    assert tries >= TOTAL


def test_two_sidecars_sharing_redis_lose_nothing(tmp_path: Path, redis_url: str) -> None:
    yaml = component("statestore", "state.redis", redis_metadata(redis_url))
    key = f"shared-counter-{tmp_path.name}"
    first = start_sidecar(tmp_path / "a", resources={"s.yaml": yaml})
    second = start_sidecar(tmp_path / "b", resources={"s.yaml": yaml})
    try:
        asyncio.run(hammer([first.port, second.port], key))
        assert final_value(first.url, key) == TOTAL
        assert final_value(second.url, key) == TOTAL
    finally:
        first.stop()
        second.stop()

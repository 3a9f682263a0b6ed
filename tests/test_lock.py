"""Distributed lock API (issue 16, part 4) on lock.redis and lock.sqlite, over real sidecars."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from tests.state_support import component, redis_metadata
from tests.support import SidecarProcess, start_sidecar

LOCK = "/v1.0-alpha1/lock/lockstore"
UNLOCK = "/v1.0-alpha1/unlock/lockstore"


def lock_component(kind: str, workdir: Path, redis_url: str, extra: dict[str, str] | None = None) -> str:
    if kind == "redis":
        return component("lockstore", "lock.redis", {**redis_metadata(redis_url), **(extra or {})})
    return component(
        "lockstore", "lock.sqlite", {"connectionString": str(workdir / "locks.db"), **(extra or {})}
    )


@pytest.fixture(params=["redis", "sqlite"])
def kind(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def sidecar(kind: str, tmp_path: Path, redis_url: str) -> Iterator[SidecarProcess]:
    app_id = f"locker-{uuid.uuid4().hex[:6]}"
    started = start_sidecar(
        tmp_path, app_id=app_id, resources={"lock.yaml": lock_component(kind, tmp_path, redis_url)}
    )
    yield started
    started.stop()


def test_lock_and_unlock_statuses(sidecar: SidecarProcess) -> None:
    with sidecar.client() as client:
        take = {"resourceId": "r1", "lockOwner": "alice", "expiryInSeconds": 60}
        first = client.post(LOCK, json=take)
        assert (first.status_code, first.json()) == (200, {"success": True})
        assert first.headers["content-type"] == "application/json"
        # No re-entrance: the holder itself gets false, as does anyone else.
        assert client.post(LOCK, json=take).json() == {"success": False}
        assert client.post(LOCK, json={**take, "lockOwner": "bob"}).json() == {"success": False}
        assert client.post(UNLOCK, json={"resourceId": "r1", "lockOwner": "bob"}).json() == {"status": 2}
        assert client.post(UNLOCK, json={"resourceId": "nothing", "lockOwner": "bob"}).json() == {"status": 1}
        assert client.post(UNLOCK, json={"resourceId": "r1", "lockOwner": "alice"}).json() == {"status": 0}
        assert client.post(UNLOCK, json={"resourceId": "r1", "lockOwner": "alice"}).json() == {"status": 1}
        # Proto field names and integer text, as protojson reads them; unknown fields ignored.
        snake = {"resource_id": "r2", "lock_owner": "carol", "expiry_in_seconds": "30", "extra": [1]}
        assert client.post(LOCK, json=snake).json() == {"success": True}
        assert client.post(UNLOCK, json={"resource_id": "r2", "lock_owner": "carol"}).json() == {"status": 0}


def test_lock_expires(sidecar: SidecarProcess) -> None:
    with sidecar.client() as client:
        assert client.post(LOCK, json={"resourceId": "e", "lockOwner": "a", "expiryInSeconds": 1}).json() == {
            "success": True
        }
        deadline = time.monotonic() + 5
        while client.post(LOCK, json={"resourceId": "e", "lockOwner": "b", "expiryInSeconds": 10}).json() != {
            "success": True
        }:
            assert time.monotonic() < deadline, "the lock never expired"
            time.sleep(0.1)
        # The former owner can no longer release what is now b's.
        assert client.post(UNLOCK, json={"resourceId": "e", "lockOwner": "a"}).json() == {"status": 2}


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "message"),
    [
        (
            LOCK,
            {"resourceId": "r", "lockOwner": "o"},
            400,
            "ERR_MALFORMED_REQUEST",
            "ExpiryInSeconds is not positive in lock store lockstore",
        ),
        (
            "/v1.0-alpha1/lock/nope",
            {"resourceId": "r", "lockOwner": "o", "expiryInSeconds": 0},
            400,
            "ERR_MALFORMED_REQUEST",
            "ExpiryInSeconds is not positive in lock store nope",
        ),
        (
            LOCK,
            {"lockOwner": "o", "expiryInSeconds": 5},
            400,
            "ERR_MALFORMED_REQUEST",
            "ResourceId is empty in lock store lockstore",
        ),
        (
            UNLOCK,
            {"resourceId": "r"},
            400,
            "ERR_MALFORMED_REQUEST",
            "LockOwner is empty in lock store lockstore",
        ),
        (
            "/v1.0-alpha1/lock/nope",
            {"resourceId": "r", "lockOwner": "o", "expiryInSeconds": 5},
            400,
            "ERR_LOCK_STORE_NOT_FOUND",
            "lock store nope not found",
        ),
        (
            "/v1.0-alpha1/unlock/nope",
            {"resourceId": "r", "lockOwner": "o"},
            400,
            "ERR_LOCK_STORE_NOT_FOUND",
            "lock store nope not found",
        ),
        (
            LOCK,
            {"resourceId": "a||b", "lockOwner": "o", "expiryInSeconds": 5},
            500,
            "ERR_TRY_LOCK",
            "failed to try acquiring lock: input key/keyPrefix 'a||b' can't contain '||'",
        ),
        (
            UNLOCK,
            {"resourceId": "a||b", "lockOwner": "o"},
            500,
            "ERR_UNLOCK",
            "failed to release lock: input key/keyPrefix 'a||b' can't contain '||'",
        ),
    ],
)
def test_errors_in_daprd_order(
    sidecar: SidecarProcess, path: str, body: dict[str, object], status: int, code: str, message: str
) -> None:
    response = httpx.post(sidecar.url + path, json=body)
    assert (response.status_code, response.json()) == (status, {"errorCode": code, "message": message})


@pytest.mark.parametrize(
    "body",
    [b"{", b"[]", b'{"expiryInSeconds": 1.5}', b'{"resourceId": 3}', b'{"expiryInSeconds": 9999999999}'],
)
def test_malformed_bodies(sidecar: SidecarProcess, body: bytes) -> None:
    response = httpx.post(sidecar.url + LOCK, content=body)
    assert response.status_code == 400
    assert response.json()["errorCode"] == "ERR_MALFORMED_REQUEST"
    assert response.json()["message"].startswith("failed deserializing HTTP body: ")


def test_no_lock_store(tmp_path: Path) -> None:
    plain = start_sidecar(tmp_path, resources={"s.yaml": component("statestore", "state.in-memory", {})})
    try:
        response = httpx.post(
            plain.url + LOCK, json={"resourceId": "r", "lockOwner": "o", "expiryInSeconds": 5}
        )
        assert (response.status_code, response.json()["errorCode"]) == (500, "ERR_LOCK_STORE_NOT_CONFIGURED")
        # The expiry is checked before the store is looked for.
        response = httpx.post(plain.url + LOCK, json={"resourceId": "r", "lockOwner": "o"})
        assert (response.status_code, response.json()["errorCode"]) == (400, "ERR_MALFORMED_REQUEST")
    finally:
        plain.stop()


def test_redis_keys_are_daprds(tmp_path: Path, redis_url: str) -> None:
    resources = {
        "a.yaml": lock_component("redis", tmp_path, redis_url).replace("name: lockstore", "name: byapp"),
        "b.yaml": lock_component("redis", tmp_path, redis_url, {"keyPrefix": "name"}).replace(
            "name: lockstore", "name: byname"
        ),
        "c.yaml": lock_component("redis", tmp_path, redis_url, {"keyPrefix": "none"}).replace(
            "name: lockstore", "name: bare"
        ),
    }
    resource = f"k-{uuid.uuid4().hex[:8]}"
    sidecar = start_sidecar(tmp_path, app_id="keyapp", resources=resources)
    direct = redis.Redis.from_url(redis_url)
    try:
        for store in ("byapp", "byname", "bare"):
            body = {"resourceId": resource, "lockOwner": "me", "expiryInSeconds": 30}
            assert httpx.post(f"{sidecar.url}/v1.0-alpha1/lock/{store}", json=body).json() == {
                "success": True
            }
        assert direct.get(f"lock||keyapp||{resource}") == b"me"
        assert direct.get(f"lock||byname||{resource}") == b"me"
        assert direct.get(f"lock||{resource}") == b"me"
        assert 0 < direct.ttl(f"lock||{resource}") <= 30
    finally:
        sidecar.stop()


def test_replicas_racing_for_one_lock_never_overlap(kind: str, tmp_path: Path, redis_url: str) -> None:
    """Three sidecars of one app, four workers each, all taking and releasing one lock for a while:
    at most one worker is ever inside, every release by the holder succeeds, and a holder that
    vanishes without releasing blocks the others only until its lock expires."""
    app_id = f"racer-{uuid.uuid4().hex[:6]}"
    resources = {"lock.yaml": lock_component(kind, tmp_path, redis_url)}
    sidecars = [start_sidecar(tmp_path / f"s{i}", app_id=app_id, resources=resources) for i in range(3)]
    inside = 0
    most_inside = 0
    entries = 0
    guard = threading.Lock()
    stop_at = time.monotonic() + 4
    resource = "the-one"

    def worker(sidecar: SidecarProcess, n: int) -> int:
        nonlocal inside, most_inside, entries
        owner = f"{sidecar.port}-{n}"
        taken = 0
        with sidecar.client() as client:
            while time.monotonic() < stop_at:
                body = {"resourceId": resource, "lockOwner": owner, "expiryInSeconds": 30}
                answer = client.post(LOCK, json=body)
                assert answer.status_code == 200, answer.text
                if not answer.json()["success"]:
                    continue
                with guard:
                    inside += 1
                    entries += 1
                    most_inside = max(most_inside, inside)
                time.sleep(0.002)
                with guard:
                    inside -= 1
                assert client.post(UNLOCK, json={"resourceId": resource, "lockOwner": owner}).json() == {
                    "status": 0
                }
                taken += 1
        return taken

    try:
        with ThreadPoolExecutor(12) as pool:
            counts = list(pool.map(lambda job: worker(*job), [(s, n) for s in sidecars for n in range(4)]))
        assert most_inside == 1
        assert sum(counts) == entries > 10
        assert sum(1 for c in counts if c) >= 3, counts  # the lock moved between workers
        # A holder that disappears: the others get the lock once its expiry passes, not before.
        crashed = {"resourceId": resource, "lockOwner": "crashed", "expiryInSeconds": 2}
        assert httpx.post(sidecars[0].url + LOCK, json=crashed).json() == {"success": True}
        taken_at = time.monotonic()
        won = None
        while won is None:
            for sidecar in sidecars[1:]:
                body = {"resourceId": resource, "lockOwner": f"heir-{sidecar.port}", "expiryInSeconds": 5}
                if httpx.post(sidecar.url + LOCK, json=body).json()["success"]:
                    won = time.monotonic() - taken_at
                    break
            assert time.monotonic() - taken_at < 6, "the expired lock was never free"
            time.sleep(0.05)
        assert 1.5 < won < 4, won
    finally:
        for sidecar in sidecars:
            sidecar.stop()


def test_lock_sqlite_defaults_to_the_shared_folder(tmp_path: Path) -> None:
    sidecar = start_sidecar(tmp_path, resources={"l.yaml": component("lockstore", "lock.sqlite", {})})
    try:
        body = {"resourceId": "r", "lockOwner": "o", "expiryInSeconds": 5}
        assert httpx.post(f"{sidecar.url}/v1.0-alpha1/lock/lockstore", json=body).json() == {"success": True}
        assert (sidecar.data_dir / "locks.db").exists()  # --data-dir is the shared folder here
    finally:
        sidecar.stop()

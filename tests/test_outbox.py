"""Transactional outbox (issue 16, part 6) on the SQLite, Redis and PostgreSQL state stores: a state
transaction's messages go out exactly when its state is committed, across a SIGKILL mid-stream."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.app_process import AppProcess, wait_until
from tests.private_redis import PrivateRedis
from tests.state_support import component, redis_metadata
from tests.support import SidecarProcess, free_port, start_sidecar

OUTBOX = {"outboxPublishPubsub": "pubsub", "outboxPublishTopic": "orders"}
SUBSCRIPTIONS = [{"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}]


@pytest.fixture(params=["sqlite", "redis", "postgresql"])
def store_yaml(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    kind: str = request.param
    # A key prefix of this test's own, so stores shared across tests start empty.
    prefix = {"keyPrefix": f"t{uuid.uuid4().hex[:8]}"}
    if kind == "sqlite":
        metadata = {"connectionString": str(tmp_path / "state.db")}
    elif kind == "redis":
        metadata = redis_metadata(request.getfixturevalue("redis_url"))
    else:
        metadata = {"connectionString": request.getfixturevalue("postgres_url")}
    return component("statestore", f"state.{kind}", {**metadata, **prefix, **OUTBOX})


def resources(store_yaml: str, workdir: Path) -> dict[str, str]:
    pubsub = {"connectionString": str(workdir / "pubsub.db"), "leaseDuration": "2s", "pollInterval": "50ms"}
    return {"state.yaml": store_yaml, "pubsub.yaml": component("pubsub", "pubsub.sqlite", pubsub)}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[AppProcess]:
    started = AppProcess(tmp_path, SUBSCRIPTIONS)
    yield started
    started.stop()


def transact(sidecar: SidecarProcess, operations: list[dict[str, object]]) -> httpx.Response:
    return httpx.post(
        f"{sidecar.url}/v1.0/state/statestore/transaction", json={"operations": operations}, timeout=10
    )


def upsert(key: str, value: object, **metadata: str) -> dict[str, object]:
    return {"operation": "upsert", "request": {"key": key, "value": value, "metadata": metadata}}


def test_upserts_publish_deletes_do_not_and_projections_replace_the_payload(
    store_yaml: str, tmp_path: Path, app: AppProcess
) -> None:
    port = free_port()
    sidecar = start_sidecar(
        tmp_path,
        resources=resources(store_yaml, tmp_path),
        extra_args=["--app-port", str(app.port)],
        port=port,
    )
    try:
        assert transact(sidecar, [upsert("a", {"n": 1}, custom="x")]).status_code == 204
        first = app.wait_for(1, "/orders")[0].event
        assert first["id"].startswith("outbox-")
        assert (first["topic"], first["pubsubname"], first["source"]) == ("orders", "pubsub", "testapp")
        assert first["data"] == {"n": 1}
        assert first["custom"] == "x"  # op metadata travels as CloudEvent attributes, as in daprd
        assert transact(sidecar, [{"operation": "delete", "request": {"key": "a"}}]).status_code == 204
        projected = [upsert("b", "2"), upsert("b", "3", **{"outbox.projection": "true"})]
        assert transact(sidecar, projected).status_code == 204
        events = [d.event for d in app.wait_for(2, "/orders")]
        assert [e["data"] for e in events] == [{"n": 1}, "3"]
        assert httpx.get(f"{sidecar.url}/v1.0/state/statestore/b").json() == "2"
        time.sleep(0.5)
        assert len(app.deliveries("/orders")) == 2  # the delete published nothing
        # Plain saves are not part of the outbox.
        assert (
            httpx.post(f"{sidecar.url}/v1.0/state/statestore", json=[{"key": "c", "value": 1}]).status_code
            == 204
        )
        time.sleep(0.5)
        assert len(app.deliveries("/orders")) == 2
    finally:
        sidecar.stop()


def test_a_failed_staging_writes_nothing(tmp_path: Path, app: AppProcess) -> None:
    """The internal hand-off goes through a Redis pubsub whose server is then stopped: the
    transaction fails with ERR_PUBLISH_OUTBOX and writes nothing."""
    server = PrivateRedis(tmp_path / "redis")
    store = component(
        "statestore",
        "state.sqlite",
        {"connectionString": str(tmp_path / "s.db"), **OUTBOX, "outboxPubsub": "handoff"},
    )
    handoff = component("handoff", "pubsub.redis", {"redisHost": server.address, "redisMaxRetries": "-1"})
    res = {**resources(store, tmp_path), "handoff.yaml": handoff}
    sidecar = start_sidecar(tmp_path, resources=res, extra_args=["--app-port", str(app.port)])
    try:
        assert transact(sidecar, [upsert("before", 1)]).status_code == 204
        app.wait_for(1, "/orders")
        server.stop()
        response = transact(sidecar, [upsert("x", 1)])
        assert response.status_code == 500
        body = response.json()
        assert body["errorCode"] == "ERR_PUBLISH_OUTBOX"
        assert body["message"].startswith("error while publishing outbox message: ")
        assert body["details"][0]["reason"] == "DAPR_PUBSUB_OUTBOX"
        assert httpx.get(f"{sidecar.url}/v1.0/state/statestore/x").status_code == 204
    finally:
        sidecar.stop()
        server.stop()


def test_sigkill_mid_stream_loses_no_message_and_invents_none(
    store_yaml: str, tmp_path: Path, app: AppProcess
) -> None:
    port = free_port()
    args = ["--app-port", str(app.port)]
    res = resources(store_yaml, tmp_path)
    sidecar = start_sidecar(tmp_path, resources=res, extra_args=args, port=port)
    acknowledged: set[int] = set()
    attempted: set[int] = set()
    stop = threading.Event()
    counter = iter(range(1_000_000))
    guard = threading.Lock()

    def writer() -> None:
        with httpx.Client(timeout=5) as client:
            while not stop.is_set():
                with guard:
                    n = next(counter)
                    attempted.add(n)
                try:
                    answer = client.post(
                        f"{sidecar.url}/v1.0/state/statestore/transaction",
                        json={"operations": [upsert(f"order-{n}", {"n": n})]},
                    )
                except httpx.TransportError:
                    return
                if answer.status_code == 204:
                    with guard:
                        acknowledged.add(n)

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(acknowledged) >= 30, timeout=30, what="30 acknowledged transactions")
    sidecar.stop(signal.SIGKILL)
    stop.set()
    for thread in threads:
        thread.join()
    restarted = start_sidecar(tmp_path, resources=res, extra_args=args, port=port)
    try:
        with restarted.client() as client:
            committed = {
                n for n in attempted if client.get(f"/v1.0/state/statestore/order-{n}").status_code == 200
            }
        assert acknowledged <= committed

        def delivered() -> set[int]:
            return {d.event["data"]["n"] for d in app.deliveries("/orders")}

        wait_until(
            lambda: delivered() >= committed, timeout=60, what="a message for every committed transaction"
        )
        time.sleep(3)  # anything still to come would be a message without its state
        assert delivered() == committed, sorted(delivered() - committed)
    finally:
        restarted.stop()

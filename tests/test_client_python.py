"""The Python client (clients/python) against a real sidecar: the blocking and the asyncio client,
and the Starlette subscription helper served by uvicorn as the sidecar's app."""

from __future__ import annotations

import json
import runpy
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pillion_client import (
    AsyncDaprClient,
    BulkPublishEntry,
    DaprClient,
    DaprError,
    DeleteItem,
    SaveItem,
)
from pillion_client.subscriptions import Status, Subscriptions, TopicEvent

from tests.support import ROOT, SidecarProcess, free_port, start_sidecar

STATE = """apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: statestore}
spec: {type: state.in-memory, version: v1}
"""
PUBSUB = """apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: pubsub}
spec:
  type: pubsub.in-memory
  version: v1
  metadata:
  - {name: deliveryRetryInterval, value: 20ms}
"""
SECRETS = """apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: localsecrets}
spec:
  type: secretstores.local.file
  version: v1
  metadata:
  - {name: secretsFile, value: secrets.json}
"""
RESOURCES = {
    "state.yaml": STATE,
    "pubsub.yaml": PUBSUB,
    "secrets.yaml": SECRETS,
    "secrets.json": json.dumps({"db-password": "hunter2", "api": {"key": "k-123"}}),
}


class Inbox:
    """What the handlers accepted, by handler name, and how often each saw each event."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: dict[str, list[TopicEvent]] = {}
        self.calls: dict[str, int] = {}

    def record(self, name: str, event: TopicEvent) -> int:
        with self.lock:
            key = f"{name}|{event.id}"
            self.calls[key] = self.calls.get(key, 0) + 1
            return self.calls[key]

    def accept(self, name: str, event: TopicEvent) -> None:
        with self.lock:
            self.events.setdefault(name, []).append(event)

    def wait(self, name: str, check: Callable[[TopicEvent], bool], timeout: float = 10) -> TopicEvent:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [e for e in self.events.get(name, []) if check(e)]
            if found:
                return found[0]
            time.sleep(0.02)
        raise AssertionError(f"no matching event for {name} within {timeout}s")


INBOX = Inbox()
subscriptions = Subscriptions()


@subscriptions.subscribe("pubsub", "orders")
async def orders(event: TopicEvent) -> None:
    INBOX.record("orders", event)
    INBOX.accept("orders", event)


@subscriptions.subscribe("pubsub", "orders", match='event.type == "widget.created"')
def widgets(event: TopicEvent) -> Status:
    INBOX.record("widgets", event)
    INBOX.accept("widgets", event)
    return Status.SUCCESS


@subscriptions.subscribe("pubsub", "raw", metadata={"rawPayload": "true"})
async def raw(event: TopicEvent) -> None:
    INBOX.accept("raw", event)


@subscriptions.subscribe("pubsub", "flaky", route="/flaky")
def flaky(event: TopicEvent) -> Status | None:
    if INBOX.record("flaky", event) == 1:
        return Status.RETRY
    INBOX.accept("flaky", event)
    return None


@subscriptions.subscribe("pubsub", "throws")
async def throws(event: TopicEvent) -> None:
    if INBOX.record("throws", event) == 1:
        raise RuntimeError("the first try fails")
    INBOX.accept("throws", event)


@subscriptions.subscribe("pubsub", "doomed", dead_letter_topic="poison")
async def doomed(event: TopicEvent) -> Status:
    INBOX.record("doomed", event)
    return Status.DROP


@subscriptions.subscribe("pubsub", "poison")
async def poison(event: TopicEvent) -> None:
    INBOX.accept("poison", event)


class ServedApp:
    """An ASGI app on uvicorn in a thread of the test process, on a free port."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServedApp:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def app() -> Iterator[ServedApp]:
    with ServedApp(subscriptions) as served:
        yield served


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory, app: ServedApp) -> Iterator[SidecarProcess]:
    process = start_sidecar(
        tmp_path_factory.mktemp("client-python"),
        app_id="pyclient",
        resources=RESOURCES,
        extra_args=["--app-port", str(app.port)],
        wait_path="/v1.0/healthz",  # 204 once the app's subscriptions are loaded
    )
    yield process
    process.stop()


@pytest.fixture
def client(sidecar: SidecarProcess) -> Iterator[DaprClient]:
    with DaprClient(port=sidecar.port) as dapr:
        yield dapr


# --- state ---------------------------------------------------------------------------------------


def test_save_then_get_returns_the_value_and_an_etag(client: DaprClient) -> None:
    client.save_state("statestore", [SaveItem("order-1", {"item": "book", "qty": 2})])
    item = client.get_state("statestore", "order-1")
    assert item is not None
    assert item.value == {"item": "book", "qty": 2}
    assert item.key == "order-1"
    assert item.etag


def test_a_missing_key_is_none(client: DaprClient) -> None:
    assert client.get_state("statestore", "no-such-key") is None


def test_keys_that_need_escaping_and_plain_values_round_trip(client: DaprClient) -> None:
    key = "a/b c+d?é"
    client.save_state("statestore", [SaveItem(key, "text"), SaveItem("n", 42), SaveItem("null")])
    assert [client.get_state("statestore", k).value for k in (key, "n", "null")] == ["text", 42, None]  # type: ignore[union-attr]


def test_a_stale_etag_raises_a_409_dapr_error(client: DaprClient) -> None:
    client.save_state("statestore", [SaveItem("etag", 1)])
    first = client.get_state("statestore", "etag")
    assert first is not None
    client.save_state("statestore", [SaveItem("etag", 2, etag=first.etag)])
    with pytest.raises(DaprError) as caught:
        client.save_state("statestore", [SaveItem("etag", 3, etag=first.etag)])
    assert caught.value.status == 409
    assert caught.value.error_code == "ERR_STATE_SAVE"
    assert "etag" in caught.value.message
    assert client.get_state("statestore", "etag").value == 2  # type: ignore[union-attr]


def test_first_write_and_metadata(client: DaprClient) -> None:
    client.save_state("statestore", [SaveItem("fw", "a", concurrency="first-write")])
    with pytest.raises(DaprError) as caught:
        client.save_state("statestore", [SaveItem("fw", "b", concurrency="first-write")])
    assert caught.value.status == 409
    client.save_state("statestore", [SaveItem("ttl", "x")], metadata={"ttlInSeconds": "60"})
    item = client.get_state("statestore", "ttl")
    assert item is not None
    assert item.metadata["ttlexpiretime"].endswith("Z")


def test_delete_with_and_without_an_etag(client: DaprClient) -> None:
    client.save_state("statestore", [SaveItem("gone", True)])
    item = client.get_state("statestore", "gone")
    assert item is not None
    with pytest.raises(DaprError) as caught:
        client.delete_state("statestore", "gone", etag="not-it")
    assert (caught.value.status, caught.value.error_code) == (409, "ERR_STATE_DELETE")
    client.delete_state("statestore", "gone", etag=item.etag)
    assert client.get_state("statestore", "gone") is None
    client.delete_state("statestore", "gone")


def test_bulk_get_keeps_the_order_and_marks_missing_keys(client: DaprClient) -> None:
    client.save_state("statestore", [SaveItem("b1", {"n": 1}), SaveItem("b2", None)])
    items = client.get_bulk_state("statestore", ["b2", "missing", "b1"], parallelism=2)
    assert [(i.key, i.value, i.found) for i in items] == [
        ("b2", None, True),
        ("missing", None, False),
        ("b1", {"n": 1}, True),
    ]
    assert items[0].etag


def test_a_transaction_is_all_or_nothing(client: DaprClient) -> None:
    client.save_state("statestore", [SaveItem("t-old", "old")])
    client.execute_transaction(
        "statestore", [SaveItem("t-new", {"ok": True}), DeleteItem("t-old")], metadata={"note": "x"}
    )
    assert client.get_state("statestore", "t-old") is None
    assert client.get_state("statestore", "t-new").value == {"ok": True}  # type: ignore[union-attr]
    with pytest.raises(DaprError) as caught:
        client.execute_transaction("statestore", [SaveItem("t-side", 1), SaveItem("t-new", 2, etag="stale")])
    assert (caught.value.status, caught.value.error_code) == (500, "ERR_STATE_TRANSACTION")
    assert client.get_state("statestore", "t-side") is None


def test_query_filters_sorts_and_pages(client: DaprClient) -> None:
    client.save_state(
        "statestore",
        [
            SaveItem("q1", {"kind": "fruit", "rank": 3}),
            SaveItem("q2", {"kind": "fruit", "rank": 1}),
            SaveItem("q3", {"kind": "veg", "rank": 2}),
        ],
    )
    query: dict[str, Any] = {
        "filter": {"EQ": {"kind": "fruit"}},
        "sort": [{"key": "rank", "order": "ASC"}],
        "page": {"limit": 1},
    }
    first = client.query_state("statestore", query)
    assert [r.key for r in first.results] == ["q2"]
    assert first.token
    second = client.query_state("statestore", {**query, "page": {"limit": 1, "token": first.token}})
    assert [r.key for r in second.results] == ["q1"]
    assert client.query_state("statestore", {"filter": {"EQ": {"kind": "mineral"}}}).results == []


def test_an_unknown_store_raises_with_the_sidecar_status_and_code(client: DaprClient) -> None:
    with pytest.raises(DaprError) as caught:
        client.get_state("nope", "k")
    error = caught.value
    assert (error.status, error.error_code, error.message) == (
        400,
        "ERR_STATE_STORE_NOT_FOUND",
        "state store nope is not found",
    )
    assert error.details
    assert (
        str(error) == "GET /v1.0/state/nope/k: 400 ERR_STATE_STORE_NOT_FOUND: state store nope is not found"
    )


# --- secrets, metadata, health, configuration ----------------------------------------------------


def test_secrets(client: DaprClient) -> None:
    assert client.get_secret("localsecrets", "db-password") == {"db-password": "hunter2"}
    assert client.get_bulk_secrets("localsecrets") == {
        "db-password": {"db-password": "hunter2"},
        "api:key": {"api:key": "k-123"},
    }
    with pytest.raises(DaprError) as caught:
        client.get_secret("localsecrets", "nope")
    assert caught.value.error_code == "ERR_SECRET_GET"
    with pytest.raises(DaprError) as caught:
        client.get_secret("nostore", "x")
    assert (caught.value.status, caught.value.error_code) == (401, "ERR_SECRET_STORE_NOT_FOUND")


def test_metadata(client: DaprClient) -> None:
    client.set_metadata("owner", "py-tests")
    metadata = client.get_metadata()
    assert metadata.id == "pyclient"
    assert metadata.extended["owner"] == "py-tests"
    assert sorted(f"{c.name}:{c.type}" for c in metadata.components) == [
        "localsecrets:secretstores.local.file",
        "pubsub:pubsub.in-memory",
        "statestore:state.in-memory",
    ]
    orders = next(s for s in metadata.subscriptions if s.topic == "orders")
    assert orders.type == "PROGRAMMATIC"
    assert [r.match for r in orders.rules] == ['event.type == "widget.created"', ""]


def test_health(client: DaprClient) -> None:
    client.wait_for_sidecar(timeout=2)
    assert client.is_healthy()
    with DaprClient(port=1) as nobody, pytest.raises(TimeoutError, match=r"not ready within 0\.3s"):
        nobody.wait_for_sidecar(timeout=0.3)


def test_the_environment_names_the_sidecar(sidecar: SidecarProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAPR_HTTP_ENDPOINT", raising=False)
    monkeypatch.setenv("DAPR_HTTP_PORT", str(sidecar.port))
    with DaprClient() as client:
        assert client.get_metadata().id == "pyclient"
    monkeypatch.setenv("DAPR_HTTP_PORT", "1")
    monkeypatch.setenv("DAPR_HTTP_ENDPOINT", sidecar.url + "/")
    with DaprClient() as client:
        assert client.get_metadata().id == "pyclient"


def test_api_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    guarded = start_sidecar(tmp_path, resources={"state.yaml": STATE}, env={"DAPR_API_TOKEN": "s3cret"})
    try:
        monkeypatch.setenv("DAPR_API_TOKEN", "s3cret")
        with DaprClient(port=guarded.port) as client:
            client.save_state("statestore", [SaveItem("k", 1)])
        with DaprClient(port=guarded.port, api_token="wrong") as client, pytest.raises(DaprError) as caught:
            client.get_state("statestore", "k")
        assert (caught.value.status, caught.value.error_code, caught.value.message) == (
            401,
            "",
            "invalid api token",
        )
    finally:
        guarded.stop()


# --- pub/sub through the Starlette helper --------------------------------------------------------


def test_json_is_delivered_in_a_cloud_event(client: DaprClient) -> None:
    client.publish("pubsub", "orders", {"item": "book"}, metadata={"cloudevent.id": "json-1"})
    event = INBOX.wait("orders", lambda e: e.id == "json-1")
    assert event.data == {"item": "book"}
    assert (event.type, event.source, event.topic, event.pubsub_name) == (
        "com.dapr.event.sent",
        "pyclient",
        "orders",
        "pubsub",
    )
    assert event.data_content_type == "application/json"
    assert event.headers["content-type"] == "application/cloudevents+json"


def test_text_goes_as_text_plain(client: DaprClient) -> None:
    client.publish("pubsub", "orders", "hello", metadata={"cloudevent.id": "text-1"})
    event = INBOX.wait("orders", lambda e: e.id == "text-1")
    assert (event.data, event.data_content_type) == ("hello", "text/plain")


def test_a_cloud_event_is_routed_by_its_match_rule(client: DaprClient) -> None:
    client.publish_cloud_event(
        "pubsub",
        "orders",
        {
            "id": "ce-1",
            "source": "factory",
            "type": "widget.created",
            "specversion": "1.0",
            "data": {"size": 3},
        },
    )
    event = INBOX.wait("widgets", lambda e: e.id == "ce-1")
    assert (event.source, event.data) == ("factory", {"size": 3})
    assert "orders|ce-1" not in INBOX.calls


def test_raw_payloads_arrive_as_sent(client: DaprClient) -> None:
    payload = bytes([0, 1, 2, 250, 251])
    client.publish_raw("pubsub", "raw", payload)
    event = INBOX.wait("raw", lambda e: e.data == payload)
    assert event.data_content_type == "application/octet-stream"


def test_bulk_publish(client: DaprClient) -> None:
    failed = client.publish_bulk(
        "pubsub",
        "orders",
        [
            BulkPublishEntry({"bulk": "object"}),
            BulkPublishEntry("bulk-text"),
            BulkPublishEntry(b"bulk-bytes", entry_id="bytes"),
        ],
    )
    assert failed == []
    INBOX.wait("orders", lambda e: isinstance(e.data, dict) and e.data.get("bulk") == "object")
    INBOX.wait("orders", lambda e: e.data == "bulk-text")
    INBOX.wait("orders", lambda e: e.cloud_event.get("data_base64") is not None and e.data == b"bulk-bytes")


def test_retry_and_exceptions_are_redelivered(client: DaprClient) -> None:
    client.publish("pubsub", "flaky", "again", metadata={"cloudevent.id": "retry-1"})
    INBOX.wait("flaky", lambda e: e.id == "retry-1")
    assert INBOX.calls["flaky|retry-1"] == 2
    client.publish("pubsub", "throws", "again", metadata={"cloudevent.id": "throw-1"})
    INBOX.wait("throws", lambda e: e.id == "throw-1")
    assert INBOX.calls["throws|throw-1"] == 2


def test_drop_goes_to_the_dead_letter_topic(client: DaprClient) -> None:
    client.publish("pubsub", "doomed", "bad", metadata={"cloudevent.id": "drop-1"})
    event = INBOX.wait("poison", lambda e: e.id == "drop-1")
    assert event.topic == "doomed"
    assert INBOX.calls["doomed|drop-1"] == 1


def test_publish_errors(client: DaprClient) -> None:
    with pytest.raises(DaprError) as caught:
        client.publish("nope", "orders", {})
    assert (caught.value.status, caught.value.error_code) == (404, "ERR_PUBSUB_NOT_FOUND")
    with pytest.raises(DaprError) as caught:
        client.publish_bulk("nope", "orders", [BulkPublishEntry(1)])
    assert caught.value.error_code == "ERR_PUBSUB_NOT_FOUND"


def test_subscriptions_check_the_app_token_and_refuse_duplicates() -> None:
    guarded = Subscriptions(app_api_token="app-token")
    guarded.add("p", "t", orders, route="/t")
    with pytest.raises(ValueError, match="already has a handler without a match"):
        guarded.add("p", "t", orders)
    with ServedApp(guarded) as served:
        base = f"http://127.0.0.1:{served.port}"
        assert httpx.get(f"{base}/dapr/subscribe").status_code == 401
        listed = httpx.get(f"{base}/dapr/subscribe", headers={"dapr-api-token": "app-token"})
        assert listed.json() == [{"pubsubname": "p", "topic": "t", "routes": {"rules": [], "default": "/t"}}]
        not_json = httpx.post(f"{base}/t", content=b"not json", headers={"dapr-api-token": "app-token"})
        assert not_json.json() == {"status": "DROP"}
        assert httpx.post(f"{base}/elsewhere").status_code == 404
    with pytest.raises(RuntimeError, match="subscribe before the routes are served"):
        guarded.add("p", "late", orders)


# --- the asyncio client --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_client(sidecar: SidecarProcess) -> None:
    async with AsyncDaprClient(sidecar.url) as client:
        await client.wait_for_sidecar(timeout=2)
        await client.save_state("statestore", [SaveItem("async-1", {"a": 1})])
        item = await client.get_state("statestore", "async-1")
        assert item is not None
        assert item.value == {"a": 1}
        with pytest.raises(DaprError) as caught:
            await client.save_state("statestore", [SaveItem("async-1", 2, etag="stale")])
        assert caught.value.status == 409
        await client.execute_transaction("statestore", [DeleteItem("async-1", etag=item.etag)])
        assert [i.found for i in await client.get_bulk_state("statestore", ["async-1"])] == [False]
        assert (await client.query_state("statestore", {"filter": {"EQ": {"a": 1}}})).results == []
        assert await client.get_secret("localsecrets", "db-password") == {"db-password": "hunter2"}
        assert "db-password" in await client.get_bulk_secrets("localsecrets")
        await client.set_metadata("async", "yes")
        assert (await client.get_metadata()).extended["async"] == "yes"
        assert await client.is_healthy()
        await client.publish("pubsub", "orders", {"via": "async"}, metadata={"cloudevent.id": "async-1"})
        assert await client.publish_bulk("pubsub", "orders", [BulkPublishEntry("async-bulk")]) == []
        await client.publish_cloud_event("pubsub", "orders", {"id": "async-ce", "type": "t", "data": 1})
        await client.publish_raw("pubsub", "raw", b"async-raw")
    INBOX.wait("orders", lambda e: e.id == "async-1")
    INBOX.wait("orders", lambda e: e.data == "async-bulk")
    INBOX.wait("orders", lambda e: e.id == "async-ce")
    INBOX.wait("raw", lambda e: e.data == b"async-raw")


# --- packaging -----------------------------------------------------------------------------------


def test_the_client_builds_as_its_own_wheel(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the checkout
    shutil.copytree(ROOT / "clients" / "python", source, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("pillion_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(archive.read(n).decode() for n in names if n.endswith("METADATA"))
    assert "pillion_client/py.typed" in names
    assert {n.split("/")[0] for n in names if not n.startswith("pillion_client-")} == {"pillion_client"}
    requires = sorted(line for line in metadata.splitlines() if line.startswith("Requires-Dist"))
    assert requires == [
        "Requires-Dist: httpx>=0.27",
        'Requires-Dist: starlette>=0.37; extra == "starlette"',
    ]


# --- the blocking client is generated from the asyncio one --------------------------------------

GENERATOR = ROOT / "clients" / "python" / "generate_sync.py"


def test_the_blocking_client_is_current() -> None:
    """client.py is what generate_sync.py makes of aio.py: the two cannot drift apart."""
    command = [sys.executable, str(GENERATOR), "--check"]
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_new_asyncio_call_becomes_a_blocking_one() -> None:
    namespace = runpy.run_path(str(GENERATOR))
    source = (ROOT / "clients/python/pillion_client/aio.py").read_text()
    added = source + "\n    async def ping(self) -> None:\n        await self._http.aclose()\n"
    generated: str = namespace["generate"](added)
    assert generated.endswith("\n    def ping(self) -> None:\n        self._http.close()\n")
    with pytest.raises(ValueError, match="do not convert"):
        namespace["generate"](source + "\nasync with lock:\n    pass\n")

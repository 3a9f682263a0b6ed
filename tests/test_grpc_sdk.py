"""The gRPC API with the official Python SDK (``dapr`` 1.19: DaprClient, the asyncio client, and
``dapr.ext.grpc.App`` as a gRPC app) against real sidecar processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from dapr.aio.clients import DaprClient as AsyncDaprClient
from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError
from dapr.clients.grpc._response import TopicEventResponse
from dapr.clients.grpc._state import Concurrency, StateItem, StateOptions
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import dapr_pb2_grpc, metadata_pb2, pubsub_pb2, state_pb2
from google.rpc import error_details_pb2, status_pb2

from tests.support import ROOT, SidecarProcess, free_port, start_sidecar

STATE = """apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: statestore}
spec: {type: state.in-memory, version: v1}
"""
SQLITE = """apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: sqlite}
spec:
  type: state.sqlite
  version: v1
  metadata:
  - {name: connectionString, value: state.db}
"""
PUBSUB = """apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: pubsub}
spec:
  type: pubsub.in-memory
  version: v1
  metadata:
  - {name: deliveryRetryInterval, value: 20ms}
  - {name: deliveryMaxAttempts, value: "3"}
  - name: publishingScopes
    value: "grpcapp=allowed,dead,orders,retry,drop,aio,other,lonely;grpcsub=orders,flaky,poison,broken"
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
    "sqlite.yaml": SQLITE,
    "pubsub.yaml": PUBSUB,
    "secrets.yaml": SECRETS,
    "secrets.json": json.dumps({"db-password": "hunter2", "api": {"key": "k-123"}}),
}


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    process = start_sidecar(tmp_path_factory.mktemp("grpc"), app_id="grpcapp", resources=RESOURCES)
    yield process
    process.stop()


@pytest.fixture
def sdk_env(sidecar: SidecarProcess, monkeypatch: pytest.MonkeyPatch) -> SidecarProcess:
    """The SDK finds the sidecar as an app under `pillion run` would: DAPR_HTTP_PORT/DAPR_GRPC_PORT."""
    monkeypatch.setenv("DAPR_HTTP_PORT", str(sidecar.port))
    monkeypatch.setenv("DAPR_GRPC_PORT", str(sidecar.grpc_port))
    monkeypatch.delenv("DAPR_API_TOKEN", raising=False)
    return sidecar


def _details(error: grpc.RpcError) -> list[Any]:
    """The google.rpc.Status details of a failed call, unpacked."""
    if isinstance(error, DaprGrpcError):
        status = error._grpc_status  # the SDK keeps the parsed google.rpc.Status here
        if status is None:
            return []
    else:
        trailers: dict[str, Any] = {m.key: m.value for m in error.trailing_metadata() or ()}
        raw = trailers.get("grpc-status-details-bin")
        if raw is None:
            return []
        status = status_pb2.Status.FromString(raw)
    found: list[Any] = []
    for holder in status.details:
        for kind in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.ResourceInfo,
            error_details_pb2.BadRequest,
        ):
            if holder.Is(kind.DESCRIPTOR):
                detail = kind()
                holder.Unpack(detail)
                found.append(detail)
    return found


def _subscriptions(sidecar: SidecarProcess) -> list[Any]:
    """GetMetadata's subscriptions (the SDK's response object leaves them out)."""
    channel, stub = _stub(sidecar)
    with channel:
        return list(stub.GetMetadata(metadata_pb2.GetMetadataRequest()).subscriptions)


def _reason(error: grpc.RpcError) -> str:
    infos = [d for d in _details(error) if isinstance(d, error_details_pb2.ErrorInfo)]
    return infos[0].reason if infos else ""


def _stub(sidecar: SidecarProcess) -> tuple[grpc.Channel, Any]:
    channel = grpc.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}")
    return channel, dapr_pb2_grpc.DaprStub(channel)


# --- state ---------------------------------------------------------------------------------------


def test_state_round_trip_etags_and_options(sdk_env: SidecarProcess) -> None:
    with DaprClient() as client:
        client.save_state("statestore", "g1", "hello")
        got = client.get_state("statestore", "g1")
        assert got.data == b"hello" and got.etag
        first_etag = got.etag
        client.save_state("statestore", "g1", "again", etag=first_etag)
        with pytest.raises(DaprGrpcError) as stale:
            client.save_state(
                "statestore",
                "g1",
                "stale",
                etag=first_etag,
                options=StateOptions(concurrency=Concurrency.first_write),
            )
        assert stale.value.code() == grpc.StatusCode.ABORTED
        assert stale.value.error_code() == "ERR_STATE_SAVE"
        assert client.get_state("statestore", "g1").data == b"again"
        missing = client.get_state("statestore", "never-saved")
        assert missing.data == b"" and missing.etag == ""
        with pytest.raises(DaprGrpcError) as wrong_delete:
            client.delete_state("statestore", "g1", etag="999999")
        assert wrong_delete.value.code() == grpc.StatusCode.ABORTED
        client.delete_state("statestore", "g1")
        assert client.get_state("statestore", "g1").data == b""


def test_value_saved_over_grpc_reads_back_over_http(sdk_env: SidecarProcess) -> None:
    with DaprClient() as client:
        client.save_state("statestore", "bytes", "plain text")
        client.save_state("statestore", "doc", json.dumps({"b": 1, "a": 2}))
        client.save_state(
            "statestore", "jsonmeta", '{"b": 1,  "a": 2}', state_metadata={"contentType": "application/json"}
        )
    with sdk_env.client() as http:
        plain = http.get("/v1.0/state/statestore/bytes")
        assert plain.status_code == 200 and plain.content == b"plain text"
        assert plain.headers["content-type"] == "application/json"
        assert http.get("/v1.0/state/statestore/doc").json() == {"b": 1, "a": 2}
        # contentType application/json stores the value as HTTP does: compact, keys sorted.
        assert http.get("/v1.0/state/statestore/jsonmeta").content == b'{"a":2,"b":1}'
        http.post("/v1.0/state/statestore", json=[{"key": "from-http", "value": "hello"}])
    with DaprClient() as client:
        assert client.get_state("statestore", "from-http").data == b'"hello"'


def test_ttl_bulk_and_transactions(sdk_env: SidecarProcess) -> None:
    with DaprClient() as client:
        client.save_state("statestore", "ttl", "v", state_metadata={"ttlInSeconds": "100"})
        channel, stub = _stub(sdk_env)
        with channel:
            answer = stub.GetState(state_pb2.GetStateRequest(store_name="statestore", key="ttl"))
        assert answer.data == b"v" and "ttlExpireTime" in answer.metadata
        client.save_bulk_state(
            "statestore", [StateItem(key="b1", value="one"), StateItem(key="b2", value="two")]
        )
        items = client.get_bulk_state("statestore", ["b1", "nope", "b2"]).items
        assert [(i.key, i.data) for i in items] == [("b1", b"one"), ("nope", b""), ("b2", b"two")]
        client.execute_state_transaction(
            "statestore",
            [
                _op("upsert", "t1", b"x"),
                _op("delete", "b1"),
            ],
        )
        assert client.get_state("statestore", "t1").data == b"x"
        assert client.get_state("statestore", "b1").data == b""
        with pytest.raises(DaprGrpcError) as bad_op:
            client.execute_state_transaction("statestore", [_op("merge", "t1", b"y")])
        assert bad_op.value.code() == grpc.StatusCode.UNIMPLEMENTED
    channel, stub = _stub(sdk_env)
    with channel:
        stub.DeleteBulkState(
            state_pb2.DeleteBulkStateRequest(
                store_name="statestore",
                states=[common_pb2.StateItem(key="b2"), common_pb2.StateItem(key="t1")],
            )
        )
        with pytest.raises(grpc.RpcError) as illegal:
            stub.DeleteBulkState(
                state_pb2.DeleteBulkStateRequest(
                    store_name="statestore",
                    states=[common_pb2.StateItem(key="ttl"), common_pb2.StateItem(key="a||b")],
                )
            )
        assert illegal.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with DaprClient() as client:
        assert client.get_state("statestore", "b2").data == b""
        # The bad key was found before anything was deleted.
        assert client.get_state("statestore", "ttl").data == b"v"


def _op(kind: str, key: str, value: bytes = b"") -> Any:
    from dapr.clients.grpc._request import TransactionalStateOperation, TransactionOperationType

    operation = {"upsert": TransactionOperationType.upsert, "delete": TransactionOperationType.delete}.get(
        kind
    )
    if operation is None:
        # The SDK only builds valid kinds; send the raw string as other SDKs can.
        item = TransactionalStateOperation(key=key, data=value)
        item._operation_type = type("Kind", (), {"value": kind})()
        return item
    return TransactionalStateOperation(key=key, data=value, operation_type=operation)


def test_query(sdk_env: SidecarProcess) -> None:
    with DaprClient() as client:
        for name, city in (("ann", "Oslo"), ("bob", "Rome")):
            client.save_state(
                "sqlite", name, json.dumps({"city": city}), state_metadata={"contentType": "application/json"}
            )
        query = json.dumps({"filter": {"EQ": {"city": "Rome"}}})
        found = client.query_state("sqlite", query)
        assert [(r.key, json.loads(r.value)) for r in found.results] == [("bob", {"city": "Rome"})]
        assert client.query_state("sqlite", json.dumps({"filter": {"EQ": {"city": "Nowhere"}}})).results == []


def test_state_errors_carry_daprd_details(sdk_env: SidecarProcess) -> None:
    with DaprClient() as client:
        with pytest.raises(DaprGrpcError) as unknown:
            client.get_state("nostore", "k")
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert unknown.value.details() == "state store nostore is not found"
        assert unknown.value.error_code() == "DAPR_STATE_NOT_FOUND"
        with pytest.raises(DaprGrpcError) as illegal:
            client.save_state("statestore", "a||b", "v")
        assert illegal.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert illegal.value.error_code() == "DAPR_STATE_ILLEGAL_KEY"
        kinds = [type(d).__name__ for d in _details(illegal.value)]
        assert kinds == ["BadRequest", "ResourceInfo", "ErrorInfo"]
        with pytest.raises(DaprGrpcError) as bad_query:
            client.query_state("statestore", "not json")
        assert bad_query.value.code() == grpc.StatusCode.INTERNAL
        assert bad_query.value.error_code() == "DAPR_STATE_QUERY_FAILED"


def test_message_size_limit(sdk_env: SidecarProcess) -> None:
    with DaprClient() as client, pytest.raises(DaprGrpcError) as too_big:
        client.save_state("statestore", "big", b"x" * (5 * 1024 * 1024))
    assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# --- pub/sub -------------------------------------------------------------------------------------


def _collect(
    client: DaprClient, topic: str, answer: Callable[[Any], str], **kwargs: Any
) -> tuple[list[Any], Any]:
    seen: list[Any] = []

    def handler(message: Any) -> TopicEventResponse:
        seen.append(message)
        return TopicEventResponse(answer(message))

    close = client.subscribe_with_handler("pubsub", topic, handler, **kwargs)
    return seen, close


def _wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_streaming_subscription_acks_retries_and_dead_letters(sdk_env: SidecarProcess) -> None:
    with DaprClient() as client:
        orders, close_orders = _collect(client, "orders", lambda m: "success")
        retries, close_retry = _collect(client, "retry", lambda m: "retry")
        drops, close_drop = _collect(client, "drop", lambda m: "drop", dead_letter_topic="dead")
        dead, close_dead = _collect(client, "dead", lambda m: "success")
        try:
            _wait_for(lambda: len(_subscriptions(sdk_env)) >= 4)
            listed = {(s.topic, s.type) for s in _subscriptions(sdk_env)}
            assert ("orders", metadata_pb2.PubsubSubscriptionType.STREAMING) in listed
            with sdk_env.client() as http:
                described = http.get("/v1.0/metadata").json()["subscriptions"]
            assert {"orders", "retry", "drop", "dead"} <= {s["topic"] for s in described}
            assert {s["type"] for s in described} == {"STREAMING"}
            client.publish_event(
                "pubsub", "orders", data=json.dumps({"n": 1}), data_content_type="application/json"
            )
            client.publish_event("pubsub", "orders", data="plain")
            client.publish_event("pubsub", "retry", data="again")
            client.publish_event("pubsub", "drop", data="unwanted")
            _wait_for(lambda: len(orders) == 2 and len(retries) == 3 and len(dead) == 1)
            assert orders[0].data() == {"n": 1}
            assert orders[0].data_content_type() == "application/json"
            assert orders[1].data() == "plain" or orders[1].raw_data() == b"plain"
            assert orders[0].pubsub_name() == "pubsub" and orders[0].topic() == "orders"
            assert orders[0].extensions().get("traceparent")
            time.sleep(0.3)
            assert len(retries) == 3, "deliveryMaxAttempts is 3"
            assert len(drops) == 1
        finally:
            for close in (close_orders, close_retry, close_drop, close_dead):
                close()
        _wait_for(lambda: not _subscriptions(sdk_env))


def test_stream_gets_messages_published_while_it_waits_and_survives_slow_acks(
    sdk_env: SidecarProcess,
) -> None:
    with DaprClient() as client:
        subscription = client.subscribe("pubsub", "lonely")
        try:
            _wait_for(lambda: any(s.topic == "lonely" for s in _subscriptions(sdk_env)))
            for n in range(3):
                client.publish_event("pubsub", "lonely", data=f"m{n}")
            got = [subscription.next_message() for _ in range(3)]
            # Acks by id, in any order.
            for message in reversed(got):
                subscription.respond_success(message)
            assert sorted(m.raw_data() for m in got) == [b"m0", b"m1", b"m2"]
        finally:
            subscription.close()


def test_trace_context_from_grpc_metadata(sdk_env: SidecarProcess) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with DaprClient() as client:
        subscription = client.subscribe("pubsub", "lonely")
        try:
            _wait_for(lambda: any(s.topic == "lonely" for s in _subscriptions(sdk_env)))
            channel, stub = _stub(sdk_env)
            with channel:
                request = pubsub_pb2.PublishEventRequest(pubsub_name="pubsub", topic="lonely", data=b"t")
                stub.PublishEvent(request, metadata=[("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01")])
            message = subscription.next_message()
            subscription.respond_success(message)
            traceparent = message.extensions()["traceparent"]
            assert traceparent.split("-")[1] == trace_id, traceparent
        finally:
            subscription.close()


def test_stream_protocol_errors(sdk_env: SidecarProcess) -> None:
    channel, stub = _stub(sdk_env)
    with channel:
        initial = pubsub_pb2.SubscribeTopicEventsRequestAlpha1(
            initial_request=pubsub_pb2.SubscribeTopicEventsRequestInitialAlpha1(pubsub_name="nope", topic="t")
        )
        with pytest.raises(grpc.RpcError) as unknown:
            list(stub.SubscribeTopicEventsAlpha1(iter([initial]), timeout=5))
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _reason(unknown.value) == "DAPR_PUBSUB_NOT_FOUND"
        ack = pubsub_pb2.SubscribeTopicEventsRequestAlpha1(
            event_processed=pubsub_pb2.SubscribeTopicEventsRequestProcessedAlpha1(id="x")
        )
        with pytest.raises(grpc.RpcError) as no_initial:
            list(stub.SubscribeTopicEventsAlpha1(iter([ack]), timeout=5))
        assert no_initial.value.details() == "initial request is required"


def test_publish_errors_and_bulk(sdk_env: SidecarProcess) -> None:
    with DaprClient() as client:
        with pytest.raises(DaprGrpcError) as unknown:
            client.publish_event("nopubsub", "t", data="x")
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert unknown.value.error_code() == "DAPR_PUBSUB_NOT_FOUND"
        with pytest.raises(DaprGrpcError) as forbidden:
            client.publish_event("pubsub", "secret-topic", data="x")
        assert forbidden.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert forbidden.value.error_code() == "DAPR_PUBSUB_FORBIDDEN"
        seen, close = _collect(client, "other", lambda m: "success")
        try:
            _wait_for(lambda: any(s.topic == "other" for s in _subscriptions(sdk_env)))
            answer = client.publish_events("pubsub", "other", data=["a", "b", "c"])
            assert list(answer.failed_entries) == []
            _wait_for(lambda: len(seen) == 3)
        finally:
            close()
    channel, stub = _stub(sdk_env)
    with channel:
        entry = pubsub_pb2.BulkPublishRequestEntry(entry_id="1", event=b"x", content_type="text/plain")
        with pytest.raises(grpc.RpcError) as duplicated:
            stub.BulkPublishEventAlpha1(
                pubsub_pb2.BulkPublishRequest(pubsub_name="pubsub", topic="other", entries=[entry, entry])
            )
        assert duplicated.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _reason(duplicated.value) == "DAPR_PUBSUB_MARSHAL_EVENTS"


# --- secrets, metadata, unimplemented ------------------------------------------------------------


def test_secrets_and_metadata(sdk_env: SidecarProcess) -> None:
    with DaprClient() as client:
        assert client.get_secret("localsecrets", "db-password").secret == {"db-password": "hunter2"}
        bulk = client.get_bulk_secret("localsecrets").secrets
        assert bulk["api:key"] == {"api:key": "k-123"}
        with pytest.raises(grpc.RpcError) as unknown:
            client.get_secret("nostore", "x")
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert unknown.value.details() == "failed finding secret store with key nostore"
        client.set_metadata("team", "blue")
        metadata = client.get_metadata()
        assert metadata.application_id == "grpcapp"
        assert metadata.extended_metadata["team"] == "blue"
        assert "daprRuntimeVersion" in metadata.extended_metadata
        assert {c.name for c in metadata.registered_components} == {
            "statestore",
            "sqlite",
            "pubsub",
            "localsecrets",
        }


def test_unimplemented_methods_are_named(sdk_env: SidecarProcess) -> None:
    with DaprClient() as client, pytest.raises(grpc.RpcError) as lock:
        client.try_lock("store", "resource", "me", 10)
    assert lock.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "TryLockAlpha1" in str(lock.value.details())


# --- the asyncio client --------------------------------------------------------------------------


def test_asyncio_client(sdk_env: SidecarProcess) -> None:
    async def scenario() -> None:
        async with AsyncDaprClient() as client:
            await client.save_state("statestore", "aio", "value")
            assert (await client.get_state("statestore", "aio")).data == b"value"
            await client.save_bulk_state("statestore", [StateItem(key="aio2", value="v2")])
            items = (await client.get_bulk_state("statestore", ["aio", "aio2"])).items
            assert [i.data for i in items] == [b"value", b"v2"]
            await client.execute_state_transaction("statestore", [_op("delete", "aio2")])
            await client.delete_state("statestore", "aio")
            assert (await client.get_state("statestore", "aio")).data == b""
            assert (await client.get_secret("localsecrets", "db-password")).secret["db-password"] == "hunter2"
            assert "db-password" in (await client.get_bulk_secret("localsecrets")).secrets
            await client.set_metadata("aio", "yes")
            assert (await client.get_metadata()).extended_metadata["aio"] == "yes"
            subscription = await client.subscribe("pubsub", "aio")
            try:
                for _ in range(200):
                    if any(s.topic == "aio" for s in _subscriptions(sdk_env)):
                        break
                    await asyncio.sleep(0.02)
                await client.publish_event("pubsub", "aio", data="from asyncio")
                message = await asyncio.wait_for(subscription.next_message(), 10)
                assert message.raw_data() == b"from asyncio"
                await subscription.respond_success(message)
            finally:
                await subscription.close()
            with pytest.raises(DaprGrpcError) as unknown:
                await client.get_state("nostore", "k")
            assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    asyncio.run(scenario())


# --- gates: token, spec.api, shutdown ------------------------------------------------------------


def test_api_token_and_denied_apis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        """apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata: {name: c}
spec:
  api:
    denied:
    - {name: secrets, version: v1, protocol: grpc}
"""
    )
    process = start_sidecar(
        tmp_path / "s",
        resources={"state.yaml": STATE, "secrets.yaml": SECRETS, "secrets.json": "{}"},
        extra_args=["--config", str(config)],
        env={"DAPR_API_TOKEN": "s3cret"},
    )
    try:
        channel, stub = _stub(process)
        with channel:
            request = state_pb2.GetStateRequest(store_name="statestore", key="k")
            with pytest.raises(grpc.RpcError) as missing:
                stub.GetState(request)
            assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert _reason(missing.value) == "Unauthorized"
            with pytest.raises(grpc.RpcError) as wrong:
                stub.GetState(request, metadata=[("dapr-api-token", "nope")])
            assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
            stub.GetState(request, metadata=[("dapr-api-token", "s3cret")])
        monkeypatch.setenv("DAPR_HTTP_PORT", str(process.port))
        monkeypatch.setenv("DAPR_GRPC_PORT", str(process.grpc_port))
        monkeypatch.setenv("DAPR_API_TOKEN", "s3cret")
        with DaprClient() as client:
            client.save_state("statestore", "k", "v")
            with pytest.raises(grpc.RpcError) as denied:
                client.get_secret("localsecrets", "x")
            assert denied.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert denied.value.details() == "Not Implemented"
            # The HTTP secrets API stays on: the rule names protocol grpc.
            with process.client(headers={"dapr-api-token": "s3cret"}) as http:
                assert http.get("/v1.0/secrets/localsecrets/x").status_code != 404
            client.shutdown()
        assert process.proc.wait(10) == 0
    finally:
        process.stop()


def test_grpc_request_metrics(sdk_env: SidecarProcess) -> None:
    with DaprClient() as client:
        client.get_state("statestore", "metrics")
    metrics_port = int(sdk_env.args[sdk_env.args.index("--metrics-port") + 1])
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    assert 'method="GetState"' in text and "pillion_http_server_requests_total" in text


# --- a gRPC app built on dapr.ext.grpc -----------------------------------------------------------

GRPC_APP = """
import json, sys
from dapr.ext.grpc import App
from dapr.clients.grpc._response import TopicEventResponse

port, record = int(sys.argv[1]), sys.argv[2]
app = App()
attempts = {}

def note(kind, event):
    with open(record, "a") as out:
        out.write(json.dumps({"kind": kind, "id": event.EventID(), "data": event.Data().decode(),
                              "topic": event.Extensions().get("topic")}) + "\\n")

@app.subscribe(pubsub_name="pubsub", topic="orders")
def orders(event):
    note("orders", event)

@app.subscribe(pubsub_name="pubsub", topic="flaky")
def flaky(event):
    attempts[event.EventID()] = attempts.get(event.EventID(), 0) + 1
    note("flaky", event)
    return TopicEventResponse("success" if attempts[event.EventID()] >= 2 else "retry")

@app.subscribe(pubsub_name="pubsub", topic="poison", dead_letter_topic="graveyard")
def poison(event):
    note("poison", event)
    return TopicEventResponse("drop")

@app.subscribe(pubsub_name="pubsub", topic="graveyard")
def graveyard(event):
    note("graveyard", event)

@app.subscribe(pubsub_name="pubsub", topic="broken")
def broken(event):
    note("broken", event)
    raise RuntimeError("the handler failed")

app.register_health_check(lambda: None)
app.run(port)
"""


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_grpc_app_with_the_sdk_app(tmp_path: Path) -> None:
    app_port = free_port()
    record = tmp_path / "events.jsonl"
    script = tmp_path / "app.py"
    script.write_text(GRPC_APP)
    app = subprocess.Popen(
        [sys.executable, str(script), str(app_port), str(record)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    process = start_sidecar(
        tmp_path / "s",
        app_id="grpcsub",
        resources={"pubsub.yaml": PUBSUB},
        extra_args=[
            "--app-port",
            str(app_port),
            "--app-protocol",
            "grpc",
            "--enable-app-health-check",
            "--app-health-probe-interval",
            "1",
        ],
        wait_path="/v1.0/healthz",
    )
    try:
        with process.client() as http:
            metadata = http.get("/v1.0/metadata").json()
            assert metadata["appConnectionProperties"]["protocol"] == "grpc"
            assert metadata["extended"]["appHealth"] == "healthy"
            assert "healthCheckPath" not in metadata["appConnectionProperties"]["health"]
            assert {s["topic"] for s in metadata["subscriptions"]} == {
                "orders",
                "flaky",
                "poison",
                "graveyard",
                "broken",
            }
            for topic, data in (("orders", "o1"), ("flaky", "f1"), ("poison", "p1"), ("broken", "b1")):
                http.post(
                    f"/v1.0/publish/pubsub/{topic}", content=data, headers={"content-type": "text/plain"}
                )
            _wait_for(
                lambda: (
                    {r["kind"] for r in _records(record)} >= {"orders", "graveyard"}
                    and len([r for r in _records(record) if r["kind"] == "flaky"]) == 2
                    and len([r for r in _records(record) if r["kind"] == "broken"]) == 3
                ),
                timeout=20,
            )
        records = _records(record)
        assert [r["data"] for r in records if r["kind"] == "orders"] == ["o1"]
        flaky = [r for r in records if r["kind"] == "flaky"]
        assert flaky[0]["id"] == flaky[1]["id"], "RETRY delivers the same event again"
        assert [r["data"] for r in records if r["kind"] == "graveyard"] == ["p1"]
        assert [r["topic"] for r in records if r["kind"] == "graveyard"] == ["poison"]
    finally:
        process.stop()
        app.terminate()
        app.wait(10)


def test_the_python_sdk_sample_under_pillion_run(tmp_path: Path) -> None:
    """samples/python/sdk_orders.py under `pillion run` with the embedded components: the app finds
    the gRPC API through DAPR_GRPC_PORT, and the script's exit code is the verdict."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime",
            "run",
            "--app-id",
            "sdkorders",
            "--data-dir",
            str(tmp_path / "data"),
            "--",
            sys.executable,
            str(ROOT / "samples" / "python" / "sdk_orders.py"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stale update refused: ABORTED" in result.stdout
    assert "stored quantity: 3" in result.stdout


def test_threads_left_behind() -> None:
    """The SDK's subscription threads of earlier tests have finished (no hang at exit)."""
    _wait_for(lambda: not [t for t in threading.enumerate() if "subscri" in t.name.lower()], timeout=10)

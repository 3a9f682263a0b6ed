"""The served methods of ``dapr.proto.runtime.v1.Dapr``: read the protobuf request, call the building
block, build the protobuf response. The rules (keys, etags, TTLs, scopes, envelopes) are the
blocks'; this module only knows the wire format (docs/grpc.md)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.protobuf import empty_pb2

from components.state.base import StoredItem
from runtime import errors
from runtime.blocks.pubsub import BulkEntry, Publication
from runtime.blocks.state import DeleteItem, SaveItem, check_key
from runtime.errors import APIError, Code, GrpcCode
from runtime.grpc.errors import GrpcError, StatusCode
from runtime.grpc.protos import common_pb2, metadata_pb2, pubsub_pb2, secret_pb2, state_pb2
from runtime.observability.tracing import Span

if TYPE_CHECKING:
    from runtime.lifecycle.sidecar import Sidecar

log = logging.getLogger("pillion.grpc")
EMPTY = empty_pb2.Empty()
_CONCURRENCY = {common_pb2.StateOptions.CONCURRENCY_FIRST_WRITE: "first-write", 2: "last-write"}
_CONSISTENCY = {common_pb2.StateOptions.CONSISTENCY_EVENTUAL: "eventual", 2: "strong"}
_SUBSCRIPTION_TYPES: dict[str, int] = {
    "DECLARATIVE": metadata_pb2.PubsubSubscriptionType.DECLARATIVE,
    "PROGRAMMATIC": metadata_pb2.PubsubSubscriptionType.PROGRAMMATIC,
    "STREAMING": metadata_pb2.PubsubSubscriptionType.STREAMING,
}
_ACTOR_STATUS: dict[str, metadata_pb2.ActorRuntime.ActorRuntimeStatus.ValueType] = {
    "DISABLED": metadata_pb2.ActorRuntime.DISABLED,
    "RUNNING": metadata_pb2.ActorRuntime.RUNNING,
}
# DeleteState's failure, by its gRPC code, as DeleteBulkState reports it.
_ETAG_PROBLEMS: dict[GrpcCode, errors.EtagProblem] = {
    GrpcCode.ABORTED: "mismatch",
    GrpcCode.INVALID_ARGUMENT: "invalid",
}
# The one metadata value that makes the stored value JSON rather than the bytes as given.
_JSON = "application/json"


@dataclass(slots=True)
class Call:
    """What the transport learnt about the call: its metadata (lower-case keys) and span."""

    metadata: dict[str, str]
    span: Span
    # Sent to the caller as initial metadata with the answer (InvokeService's dapr-http-status).
    answer_metadata: list[tuple[str, str]] = field(default_factory=list)


def _etag(item: common_pb2.StateItem) -> str | None:
    return item.etag.value if item.HasField("etag") and item.etag.value else None


def _value(item: common_pb2.StateItem) -> bytes:
    """gRPC values are stored as the bytes given; ``contentType: application/json`` stores them as
    HTTP does (compact JSON), so that queries can read them (docs/grpc.md, "Values")."""
    if item.metadata.get("contentType") != _JSON:
        return item.value
    try:
        parsed = json.loads(item.value)
    except (ValueError, RecursionError) as exc:
        raise GrpcError(StatusCode.UNKNOWN, f"failed to decode JSON value of key {item.key}: {exc}") from None
    return json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _save_item(item: common_pb2.StateItem) -> SaveItem:
    if not item.key:
        raise errors.state_key_empty()
    options = item.options
    return SaveItem(
        key=item.key,
        value=_value(item),
        etag=_etag(item),
        metadata=dict(item.metadata),
        concurrency=_CONCURRENCY.get(options.concurrency, ""),
        consistency=_CONSISTENCY.get(options.consistency, ""),
    )


def _delete_item(key: str, etag: str | None, options: common_pb2.StateOptions, meta: Any) -> DeleteItem:
    return DeleteItem(
        key=key,
        etag=etag,
        metadata=dict(meta),
        concurrency=_CONCURRENCY.get(options.concurrency, ""),
        consistency=_CONSISTENCY.get(options.consistency, ""),
    )


def _expiry(item: StoredItem) -> dict[str, str]:
    if item.expires_at is None:
        return {}
    return {"ttlExpireTime": item.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")}


class DaprAPI:
    def __init__(self, sidecar: Sidecar) -> None:
        self._sidecar = sidecar

    # --- state ---------------------------------------------------------------------------------

    async def get_state(self, request: state_pb2.GetStateRequest, call: Call) -> state_pb2.GetStateResponse:
        block = self._sidecar.state
        item = await block.get(block.entry(request.store_name), request.key)
        if item is None:
            return state_pb2.GetStateResponse()
        return state_pb2.GetStateResponse(data=item.data, etag=item.etag or "", metadata=_expiry(item))

    async def get_bulk_state(
        self, request: state_pb2.GetBulkStateRequest, call: Call
    ) -> state_pb2.GetBulkStateResponse:
        block = self._sidecar.state
        entry = block.entry(request.store_name)
        keys = list(request.keys)
        items = await block.bulk_get(entry, keys)
        answer = state_pb2.GetBulkStateResponse()
        for key, item in zip(keys, items, strict=True):
            if item is None:
                answer.items.add(key=key)
            else:
                answer.items.add(key=key, data=item.data, etag=item.etag or "", metadata=_expiry(item))
        return answer

    async def save_state(self, request: state_pb2.SaveStateRequest, call: Call) -> empty_pb2.Empty:
        block = self._sidecar.state
        entry = block.entry(request.store_name)
        items = [_save_item(item) for item in request.states]
        if items:
            await block.save(entry, items)
        return EMPTY

    async def delete_state(self, request: state_pb2.DeleteStateRequest, call: Call) -> empty_pb2.Empty:
        etag = request.etag.value if request.HasField("etag") and request.etag.value else None
        item = _delete_item(request.key, etag, request.options, request.metadata)
        block = self._sidecar.state
        await block.delete(block.entry(request.store_name), item)
        return EMPTY

    async def delete_bulk_state(
        self, request: state_pb2.DeleteBulkStateRequest, call: Call
    ) -> empty_pb2.Empty:
        block, store = self._sidecar.state, request.store_name
        entry = block.entry(store)
        items = [_delete_item(s.key, _etag(s), s.options, s.metadata) for s in request.states]
        # Every key is checked before the first delete, so bad input deletes nothing.
        for item in items:
            check_key(entry, item.key)
        for item in items:
            try:
                await block.delete(entry, item)
            except APIError as exc:
                if exc.code is not Code.STATE_DELETE:
                    raise
                etag = _ETAG_PROBLEMS.get(exc.grpc)
                problem = exc.message.removeprefix(f"failed deleting state with key {item.key}: ")
                problem = problem.removeprefix("possible etag mismatch. error from state store: ")
                raise errors.state_bulk_delete_failed(store, problem, etag) from None
        return EMPTY

    async def execute_state_transaction(
        self, request: state_pb2.ExecuteStateTransactionRequest, call: Call
    ) -> empty_pb2.Empty:
        block = self._sidecar.state
        entry = block.entry(request.storeName)
        block.transactional(entry)
        ops: list[SaveItem | DeleteItem] = []
        for op in request.operations:
            kind = op.operationType
            if kind == "upsert":
                ops.append(_save_item(op.request))
            elif kind == "delete":
                item = op.request
                ops.append(_delete_item(item.key, _etag(item), item.options, item.metadata))
            else:
                raise errors.state_operation_not_supported(kind)
        if ops:
            await block.transact(entry, ops)
        return EMPTY

    async def query_state(
        self, request: state_pb2.QueryStateRequest, call: Call
    ) -> state_pb2.QueryStateResponse:
        block = self._sidecar.state
        page = await block.query(block.entry(request.store_name), request.query.encode())
        answer = state_pb2.QueryStateResponse(token=page.token or "")
        for result in page.results:
            answer.results.add(key=result.key, data=result.data, etag=result.etag or "")
        return answer

    # --- pub/sub -------------------------------------------------------------------------------

    async def publish_event(self, request: pubsub_pb2.PublishEventRequest, call: Call) -> empty_pb2.Empty:
        block = self._sidecar.pubsub
        metadata = dict(request.metadata)
        entry = block.entry(request.pubsub_name, request.topic, metadata)
        publication = Publication(request.data, request.data_content_type, metadata)
        span = call.span
        await block.publish(entry, request.topic, publication, span.traceparent, span.tracestate)
        return EMPTY

    async def bulk_publish(
        self, request: pubsub_pb2.BulkPublishRequest, call: Call
    ) -> pubsub_pb2.BulkPublishResponse:
        block, topic = self._sidecar.pubsub, request.topic
        metadata = dict(request.metadata)
        entry = block.entry(request.pubsub_name, topic, metadata)
        raw = block.raw_payload(entry, metadata)
        entries: list[BulkEntry] = []
        seen: set[str] = set()
        for item in request.entries:
            if not item.entry_id or item.entry_id in seen:
                problem = "entryId is duplicated or not present for entry"
                raise errors.pubsub_events_failed(entry.name, topic, block.app_id, problem)
            seen.add(item.entry_id)
            # Request metadata reaches an entry only when the entry has metadata of its own (daprd).
            merged = {**metadata, **item.metadata} if item.metadata else {}
            entries.append(BulkEntry(item.entry_id, Publication(item.event, item.content_type, merged)))
        span = call.span
        failed = await block.bulk_publish(entry, topic, entries, raw, span.traceparent, span.tracestate)
        if failed:
            # daprd answers a failed entry with an error, whose status has no room for the list.
            raise errors.pubsub_publish_failed(entry.name, topic, failed[0].error)
        return pubsub_pb2.BulkPublishResponse()

    # --- secrets -------------------------------------------------------------------------------

    async def get_secret(
        self, request: secret_pb2.GetSecretRequest, call: Call
    ) -> secret_pb2.GetSecretResponse:
        secret = await self._sidecar.secrets.get(request.store_name, request.key, dict(request.metadata))
        return secret_pb2.GetSecretResponse(data=secret)

    async def get_bulk_secret(
        self, request: secret_pb2.GetBulkSecretRequest, call: Call
    ) -> secret_pb2.GetBulkSecretResponse:
        found = await self._sidecar.secrets.bulk_get(request.store_name, dict(request.metadata))
        answer = secret_pb2.GetBulkSecretResponse()
        for name, values in found.items():
            answer.data[name].secrets.update(values)
        return answer

    # --- runtime -------------------------------------------------------------------------------

    async def get_metadata(
        self, request: metadata_pb2.GetMetadataRequest, call: Call
    ) -> metadata_pb2.GetMetadataResponse:
        return metadata_response(self._sidecar.metadata())

    async def set_metadata(self, request: metadata_pb2.SetMetadataRequest, call: Call) -> empty_pb2.Empty:
        if request.key:
            self._sidecar.extended[request.key] = request.value
        return EMPTY

    async def shutdown(self, request: empty_pb2.Empty, call: Call) -> empty_pb2.Empty:
        """Answer first, then stop gracefully; ``dapr-force-shutdown: true`` exits, as daprd."""
        loop = asyncio.get_running_loop()
        if call.metadata.get("dapr-force-shutdown", "").lower() == "true":
            loop.call_later(0.1, os._exit, 1)
        else:
            loop.call_soon(self._sidecar.request_stop)
        return EMPTY


def metadata_response(body: dict[str, Any]) -> metadata_pb2.GetMetadataResponse:
    """``GET /v1.0/metadata``'s document as ``GetMetadataResponse`` (the same facts, proto names)."""
    answer = metadata_pb2.GetMetadataResponse(
        id=body["id"],
        runtime_version=body.get("runtimeVersion", ""),
        extended_metadata=body.get("extended", {}),
    )
    answer.enabled_features.extend(body.get("enabledFeatures", []))
    for component in body.get("components", []):
        answer.registered_components.add(
            name=component["name"],
            type=component["type"],
            version=component["version"],
            capabilities=component.get("capabilities", []),
        )
    for subscription in body.get("subscriptions", []):
        added = answer.subscriptions.add(
            pubsub_name=subscription["pubsubname"],
            topic=subscription["topic"],
            metadata=subscription.get("metadata", {}),
            dead_letter_topic=subscription.get("deadLetterTopic", ""),
            type=_SUBSCRIPTION_TYPES.get(subscription.get("type", ""), 0),
        )
        for rule in subscription.get("rules", []):
            added.rules.rules.add(match=rule.get("match", ""), path=rule.get("path", ""))
    app = body.get("appConnectionProperties", {})
    properties = answer.app_connection_properties
    properties.port = app.get("port", 0)
    properties.protocol = app.get("protocol", "")
    properties.channel_address = app.get("channelAddress", "")
    properties.max_concurrency = app.get("maxConcurrency", 0)
    health = app.get("health")
    if health is not None:
        properties.health.health_check_path = health.get("healthCheckPath", "")
        properties.health.health_probe_interval = health.get("healthProbeInterval", "")
        properties.health.health_probe_timeout = health.get("healthProbeTimeout", "")
        properties.health.health_threshold = health.get("healthThreshold", 0)
    actors = body.get("actorRuntime", {})
    answer.actor_runtime.runtime_status = _ACTOR_STATUS.get(
        actors.get("runtimeStatus", ""), metadata_pb2.ActorRuntime.INITIALIZING
    )
    answer.actor_runtime.host_ready = bool(actors.get("hostReady", False))
    return answer

"""Dapr's HTTP wire format, without I/O: each function describes one call and how to read its
answer, so that the sync and the async client share everything but the sending."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from pillion_client.errors import DaprError
from pillion_client.models import (
    BulkPublishEntry,
    BulkStateItem,
    ComponentMetadata,
    DeleteItem,
    FailedEntry,
    QueryResponse,
    Rule,
    SaveItem,
    SidecarMetadata,
    StateItem,
    SubscriptionMetadata,
)

T = TypeVar("T")
JSON = "application/json"
METADATA_PREFIX = "metadata."


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    method: str
    path: str
    read: Callable[[httpx.Response], T]
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None

    def answer(self, response: httpx.Response) -> T:
        if response.is_error:
            raise DaprError.from_response(response)
        return self.read(response)


def base_url(endpoint: str | None, host: str | None, port: int | None) -> str:
    """The sidecar's URL: the arguments, else DAPR_HTTP_ENDPOINT, else DAPR_HTTP_PORT on 127.0.0.1."""
    chosen = endpoint or (None if host or port else os.environ.get("DAPR_HTTP_ENDPOINT"))
    if chosen:
        return chosen.rstrip("/")
    port = port or int(os.environ.get("DAPR_HTTP_PORT") or 3500)
    return f"http://{host or '127.0.0.1'}:{port}"


def default_headers(api_token: str | None) -> dict[str, str]:
    token = api_token if api_token is not None else os.environ.get("DAPR_API_TOKEN", "")
    return {"dapr-api-token": token} if token else {}


def segment(value: str) -> str:
    # The sidecar query-unescapes path parameters: "+" has to travel as %2B, "/" as %2F.
    return quote(value, safe="")


def _metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    return {METADATA_PREFIX + key: value for key, value in (metadata or {}).items()}


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _json_body(value: Any) -> dict[str, Any]:
    return {"content": _dumps(value), "headers": {"content-type": JSON}}


def _nothing(response: httpx.Response) -> None:
    return None


def _state_path(store: str) -> str:
    return f"/v1.0/state/{segment(store)}"


def _loads(data: bytes) -> Any:
    # Stored values are JSON; a value that is not (written around the API) is handed back as text.
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("utf-8", errors="replace")


def _response_metadata(response: httpx.Response) -> dict[str, str]:
    return {
        name[len(METADATA_PREFIX) :]: value
        for name, value in response.headers.items()
        if name.startswith(METADATA_PREFIX)
    }


def _options(item: SaveItem | DeleteItem) -> dict[str, str]:
    options: dict[str, str] = {}
    if item.concurrency:
        options["concurrency"] = item.concurrency
    if item.consistency:
        options["consistency"] = item.consistency
    return options


def _wire_item(item: SaveItem | DeleteItem) -> dict[str, Any]:
    wire: dict[str, Any] = {"key": item.key}
    if isinstance(item, SaveItem):
        wire["value"] = item.value
    if item.etag:
        wire["etag"] = item.etag
    if item.metadata:
        wire["metadata"] = item.metadata
    options = _options(item)
    if options:
        wire["options"] = options
    return wire


def _bulk_item(raw: Mapping[str, Any]) -> BulkStateItem:
    return BulkStateItem(
        key=str(raw.get("key", "")),
        value=raw.get("data"),
        found="data" in raw,
        etag=raw.get("etag") or None,
        metadata=dict(raw.get("metadata") or {}),
        error=raw.get("error") or None,
    )


# --- state ---------------------------------------------------------------------------------------


def get_state(
    store: str, key: str, consistency: str | None, metadata: Mapping[str, str] | None
) -> Call[StateItem | None]:
    params = _metadata(metadata)
    if consistency:
        params["consistency"] = consistency

    def read(response: httpx.Response) -> StateItem | None:
        if response.status_code == 204:
            return None
        return StateItem(
            key=key,
            value=_loads(response.content),
            etag=response.headers.get("etag") or None,
            metadata=_response_metadata(response),
        )

    return Call("GET", f"{_state_path(store)}/{segment(key)}", read, params=params)


def save_state(store: str, items: Sequence[SaveItem], metadata: Mapping[str, str] | None) -> Call[None]:
    return Call(
        "POST",
        _state_path(store),
        _nothing,
        params=_metadata(metadata),
        **_json_body([_wire_item(i) for i in items]),
    )


def delete_state(
    store: str,
    key: str,
    etag: str | None,
    concurrency: str | None,
    consistency: str | None,
    metadata: Mapping[str, str] | None,
) -> Call[None]:
    params = _metadata(metadata)
    if concurrency:
        params["concurrency"] = concurrency
    if consistency:
        params["consistency"] = consistency
    headers = {"if-match": etag} if etag else {}
    return Call("DELETE", f"{_state_path(store)}/{segment(key)}", _nothing, params=params, headers=headers)


def get_bulk_state(
    store: str, keys: Sequence[str], parallelism: int | None, metadata: Mapping[str, str] | None
) -> Call[list[BulkStateItem]]:
    body: dict[str, Any] = {"keys": list(keys)}
    if parallelism is not None:
        body["parallelism"] = parallelism
    if metadata:
        body["metadata"] = dict(metadata)

    def read(response: httpx.Response) -> list[BulkStateItem]:
        return [_bulk_item(raw) for raw in response.json()]

    return Call("POST", f"{_state_path(store)}/bulk", read, **_json_body(body))


def execute_transaction(
    store: str, operations: Sequence[SaveItem | DeleteItem], metadata: Mapping[str, str] | None
) -> Call[None]:
    body: dict[str, Any] = {
        "operations": [
            {"operation": "upsert" if isinstance(op, SaveItem) else "delete", "request": _wire_item(op)}
            for op in operations
        ]
    }
    if metadata:
        body["metadata"] = dict(metadata)
    return Call("POST", f"{_state_path(store)}/transaction", _nothing, **_json_body(body))


def query_state(
    store: str, query: Mapping[str, Any], metadata: Mapping[str, str] | None
) -> Call[QueryResponse]:
    def read(response: httpx.Response) -> QueryResponse:
        if response.status_code == 204:
            return QueryResponse(results=[])
        raw = response.json()
        return QueryResponse(
            results=[_bulk_item(r) for r in raw.get("results") or []],
            token=raw.get("token") or None,
            metadata=dict(raw.get("metadata") or {}),
        )

    path = f"/v1.0-alpha1/state/{segment(store)}/query"
    return Call("POST", path, read, params=_metadata(metadata), **_json_body(dict(query)))


# --- pub/sub -------------------------------------------------------------------------------------


def encode_data(data: Any, content_type: str | None) -> tuple[bytes, str]:
    """Bytes as application/octet-stream, text as text/plain, anything else as JSON."""
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data), content_type or "application/octet-stream"
    if isinstance(data, str):
        return data.encode(), content_type or "text/plain"
    return _dumps(data), content_type or JSON


def publish(
    pubsub: str, topic: str, data: Any, content_type: str | None, metadata: Mapping[str, str] | None
) -> Call[None]:
    body, kind = encode_data(data, content_type)
    return Call(
        "POST",
        f"/v1.0/publish/{segment(pubsub)}/{segment(topic)}",
        _nothing,
        params=_metadata(metadata),
        headers={"content-type": kind},
        content=body,
    )


def publish_bulk(
    pubsub: str, topic: str, entries: Sequence[BulkPublishEntry], metadata: Mapping[str, str] | None
) -> Call[list[FailedEntry]]:
    wire: list[dict[str, Any]] = []
    for entry in entries:
        event = entry.event
        if isinstance(event, bytes | bytearray | memoryview):
            event, kind = (
                base64.b64encode(bytes(event)).decode(),
                entry.content_type or "application/octet-stream",
            )
        elif isinstance(event, str):
            kind = entry.content_type or "text/plain"
        else:
            kind = entry.content_type or JSON
        item: dict[str, Any] = {
            "entryId": entry.entry_id or str(uuid.uuid4()),
            "event": event,
            "contentType": kind,
        }
        if entry.metadata:
            item["metadata"] = entry.metadata
        wire.append(item)
    path = f"/v1.0-alpha1/publish/bulk/{segment(pubsub)}/{segment(topic)}"
    return BulkPublishCall("POST", path, _no_failures, params=_metadata(metadata), **_json_body(wire))


def _no_failures(response: httpx.Response) -> list[FailedEntry]:
    return []


class BulkPublishCall(Call[list[FailedEntry]]):
    """A partial failure (500 naming the failed entries) is a result, not an exception."""

    __slots__ = ()

    def answer(self, response: httpx.Response) -> list[FailedEntry]:
        if response.status_code == 500:
            try:
                failed = response.json().get("failedEntries")
            except ValueError:
                failed = None
            if isinstance(failed, list):
                return [FailedEntry(str(f.get("entryId", "")), str(f.get("error", ""))) for f in failed]
        return super().answer(response)


# --- secrets, metadata, health -------------------------------------------------------------------


def _json_or_empty(response: httpx.Response) -> Any:
    return {} if response.status_code == 204 else response.json()


def get_secret(store: str, name: str, metadata: Mapping[str, str] | None) -> Call[dict[str, str]]:
    path = f"/v1.0/secrets/{segment(store)}/{segment(name)}"
    return Call("GET", path, _json_or_empty, params=_metadata(metadata))


def get_bulk_secrets(store: str, metadata: Mapping[str, str] | None) -> Call[dict[str, dict[str, str]]]:
    return Call("GET", f"/v1.0/secrets/{segment(store)}/bulk", _json_or_empty, params=_metadata(metadata))


def _sidecar_metadata(response: httpx.Response) -> SidecarMetadata:
    raw: dict[str, Any] = response.json()
    return SidecarMetadata(
        id=raw.get("id", ""),
        runtime_version=raw.get("runtimeVersion", ""),
        components=[
            ComponentMetadata(c["name"], c["type"], c.get("version", ""), list(c.get("capabilities") or []))
            for c in raw.get("components") or []
        ],
        subscriptions=[
            SubscriptionMetadata(
                pubsub_name=s["pubsubname"],
                topic=s["topic"],
                type=s.get("type", ""),
                rules=[Rule(r["path"], r.get("match", "")) for r in s.get("rules") or []],
                dead_letter_topic=s.get("deadLetterTopic", ""),
                metadata=dict(s.get("metadata") or {}),
            )
            for s in raw.get("subscriptions") or []
        ],
        extended=dict(raw.get("extended") or {}),
        raw=raw,
    )


def get_metadata() -> Call[SidecarMetadata]:
    return Call("GET", "/v1.0/metadata", _sidecar_metadata)


def set_metadata(key: str, value: str) -> Call[None]:
    return Call(
        "PUT",
        f"/v1.0/metadata/{segment(key)}",
        _nothing,
        headers={"content-type": "text/plain"},
        content=value.encode(),
    )


def healthz(outbound: bool) -> Call[None]:
    return Call("GET", "/v1.0/healthz/outbound" if outbound else "/v1.0/healthz", _nothing)

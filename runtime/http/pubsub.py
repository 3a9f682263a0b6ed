"""Publish endpoints (docs/openapi.yaml, docs/pubsub.md): parse Dapr's wire format, call the pubsub block."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from runtime import errors
from runtime.blocks.pubsub import BrokerEntry, BulkEntry, Publication, PubSubBlock
from runtime.compat import cloudevents, gojson
from runtime.http.trace_context import request_span
from runtime.http.wire import (
    JSON,
    field,
    metadata_from_query,
    no_content,
    path_param,
    query_metadata,
    read_body,
    unescape,
)
from runtime.observability.tracing import Span

_MISMATCH = "error: mismatch between contentType and event"


def _block(request: Request) -> PubSubBlock:
    block: PubSubBlock = request.app.state.sidecar.pubsub
    return block


def _target(request: Request, metadata: dict[str, str]) -> tuple[PubSubBlock, BrokerEntry, str]:
    block = _block(request)
    topic = path_param(request, "topic") if "topic" in request.path_params else ""
    return block, block.entry(path_param(request, "pubsub"), topic, metadata), topic


async def publish(request: Request) -> Response:
    params, query = request.path_params, request.scope["query_string"]
    target = publish_target(_block(request), params["pubsub"], params.get("topic"), query)
    body = await read_body(request)
    headers = request.headers
    content_type, baggage = headers.get("content-type", ""), headers.get("baggage")
    await publish_body(target, body, content_type, baggage, request_span(request))
    return no_content()


PublishTarget = tuple[PubSubBlock, BrokerEntry, str, dict[str, str]]


def publish_target(block: PubSubBlock, raw_pubsub: str, raw_topic: str | None, query: bytes) -> PublishTarget:
    """POST /v1.0/publish/{pubsub}/{topic}: the broker, checked before the body is read."""
    metadata = metadata_from_query(query)
    topic = unescape(raw_topic) if raw_topic is not None else ""
    return block, block.entry(unescape(raw_pubsub), topic, metadata), topic, metadata


async def publish_body(
    target: PublishTarget, body: bytes, content_type: str, baggage: str | None, span: Span
) -> None:
    block, entry, topic, metadata = target
    publication = Publication(body, content_type, _with_baggage(baggage, metadata))
    await block.publish(entry, topic, publication, span.traceparent, span.tracestate)


def _with_baggage(baggage: str | None, metadata: dict[str, str]) -> dict[str, str]:
    """The caller's W3C ``baggage`` travels with the message and reaches the subscriber as a
    header (daprd drops it, dapr/dapr#10302); ``metadata.baggage`` given explicitly wins."""
    if baggage is None or "baggage" in metadata:
        return metadata
    return {**metadata, "baggage": baggage}


def _event_bytes(event: Any, content_type: str) -> bytes:
    """daprd's ConvertEventToBytes: the entry's event as the bytes its contentType calls for."""
    if cloudevents.is_binary(content_type):
        if not isinstance(event, str):
            raise ValueError(_MISMATCH)
        try:
            return base64.b64decode(event.replace("\r", "").replace("\n", ""), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(
                f"error: unable to decode base64 application/octect-stream data: {exc}"
            ) from None
    if cloudevents.is_text(content_type):
        if not isinstance(event, str):
            raise ValueError(_MISMATCH)
        return event.encode("utf-8")
    if cloudevents.is_json(content_type) or cloudevents.is_cloudevent(content_type):
        return gojson.go_marshal(event)
    raise ValueError(_MISMATCH)


def _entries(body: bytes, pubsub: str, topic: str, app_id: str, metadata: dict[str, str]) -> list[BulkEntry]:
    def unreadable(problem: str) -> errors.APIError:
        return errors.pubsub_events_unreadable(pubsub, topic, app_id, problem)

    try:
        items = gojson.decode_plain(body)
    except ValueError as exc:
        raise unreadable(str(exc)) from None
    if items is None:
        return []
    if not isinstance(items, list):
        raise unreadable("the body must be a JSON array of entries")
    parsed: list[tuple[str, Any, str, dict[str, str] | None]] = []
    for item in items:
        if not isinstance(item, dict):
            raise unreadable("each entry must be an object")
        entry_id, content_type, entry_meta = (
            field(item, "entryId"),
            field(item, "contentType"),
            field(item, "metadata"),
        )
        if not isinstance(entry_id, str | None) or not isinstance(content_type, str | None):
            raise unreadable("entryId and contentType must be strings")
        if entry_meta is not None and (
            not isinstance(entry_meta, dict) or not all(isinstance(v, str) for v in entry_meta.values())
        ):
            raise unreadable("metadata must be an object of strings")
        parsed.append((entry_id or "", field(item, "event"), content_type or "", entry_meta))
    entries: list[BulkEntry] = []
    seen: set[str] = set()
    for entry_id, event, content_type, entry_meta in parsed:
        try:
            data = _event_bytes(event, content_type)
        except ValueError as exc:
            raise errors.pubsub_envelope_failed(pubsub, topic, app_id, str(exc)) from None
        if not entry_id or entry_id in seen:
            problem = "entryId is duplicated or not present for entry"
            raise errors.pubsub_events_failed(pubsub, topic, app_id, problem)
        seen.add(entry_id)
        # Request metadata reaches an entry only when the entry has metadata of its own (daprd).
        merged = {**metadata, **entry_meta} if entry_meta is not None else {}
        entries.append(BulkEntry(entry_id, Publication(data, content_type, merged)))
    return entries


async def bulk_publish(request: Request) -> Response:
    metadata = query_metadata(request)
    block, entry, topic = _target(request, metadata)
    raw = block.raw_payload(entry, metadata)
    body = await read_body(request)
    entries = _entries(body, entry.name, topic, block.app_id, metadata)
    baggage = request.headers.get("baggage")
    if baggage is not None:
        for item in entries:
            item.publication.metadata = _with_baggage(baggage, item.publication.metadata)
    span = request_span(request)
    failed = await block.bulk_publish(entry, topic, entries, raw, span.traceparent, span.tracestate)
    if not failed:
        return no_content()
    answer = {
        "failedEntries": [{"entryId": f.entry_id, "error": f.error} for f in failed],
        "errorCode": "ERR_PUBSUB_PUBLISH_MESSAGE",
    }
    data = json.dumps(answer, separators=(",", ":"), ensure_ascii=False)
    error = errors.pubsub_publish_failed(entry.name, topic, failed[0].error)
    headers = {"metadata.responseData": data, "metadata.error": error.message}
    return Response(data.encode(), 500, _header_safe(headers), media_type=JSON)


def _header_safe(headers: dict[str, str]) -> dict[str, str]:
    # Header values are latin-1 on the wire: anything else is escaped as JSON would escape it.
    return {
        name: value if value.isascii() and "\n" not in value else json.dumps(value)[1:-1]
        for name, value in headers.items()
    }

"""State endpoints (docs/openapi.yaml, docs/state.md): parse Dapr's wire format, call the state block."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from components.state.base import StoredItem
from runtime.blocks.state import DeleteItem, SaveItem, StateBlock, StoreEntry
from runtime.errors import malformed, state_operation_not_supported
from runtime.http.wire import (
    JSON,
    NO_CONTENT_REPLY,
    Headers,
    Reply,
    ReplyResponse,
    decode_json,
    encode_value,
    field,
    json_reply,
    known_fields,
    metadata_from_query,
    no_content,
    optional_string,
    path_param,
    query_metadata,
    raw_json,
    read_body,
    string_map,
    unescape,
)


def _block(request: Request) -> StateBlock:
    block: StateBlock = request.app.state.sidecar.state
    return block


def _expire_text(item: StoredItem) -> str | None:
    if item.expires_at is None:
        return None
    return item.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")


_SAVE_FIELDS = frozenset({"key", "value", "etag", "metadata", "options"})


def _save_item(raw: Any, query_meta: dict[str, str]) -> SaveItem:
    if not isinstance(raw, dict):
        raise malformed("failed deserializing HTTP body: each state item must be an object")
    get = known_fields(raw, _SAVE_FIELDS)
    key = get("key")
    if key is None or key == "":
        raise malformed('"key" is a required field')
    if not isinstance(key, str):
        raise malformed("failed deserializing HTTP body: key must be a string")
    etag = optional_string(get("etag"), "etag")
    metadata = string_map(get("metadata"), "metadata")
    if query_meta:
        metadata = {**metadata, **query_meta}
    options = get("options")
    if options is not None and not isinstance(options, dict):
        raise malformed("failed deserializing HTTP body: options must be an object")
    concurrency = consistency = ""
    if options:
        concurrency = optional_string(field(options, "concurrency"), "options.concurrency")
        consistency = optional_string(field(options, "consistency"), "options.consistency")
    return SaveItem(
        key=key,
        value=encode_value(get("value")),
        etag=etag or None,
        metadata=metadata,
        concurrency=concurrency,
        consistency=consistency,
    )


async def get_state(request: Request) -> Response:
    params = request.path_params
    return ReplyResponse(await read_state(_block(request), params["store"], params["key"]))


async def read_state(block: StateBlock, raw_store: str, raw_key: str) -> Reply:
    """GET /v1.0/state/{store}/{key}, from the path parameters as they arrived (still escaped)."""
    store, key = unescape(raw_store), unescape(raw_key)
    item = await block.get(block.entry(store), key)
    if item is None:
        return NO_CONTENT_REPLY
    headers: Headers = []
    if item.etag is not None:
        headers.append((b"etag", item.etag.encode("latin-1")))
    if item.expires_at is not None:
        headers.append((b"metadata.ttlexpiretime", item.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ").encode()))
    return json_reply(200, item.data, headers)


async def save_state(request: Request) -> Response:
    block = _block(request)
    entry = check_save_target(block, request.path_params["store"])
    body = await read_body(request)
    return ReplyResponse(await write_state(block, entry, body, request.scope["query_string"]))


def check_save_target(block: StateBlock, raw_store: str) -> StoreEntry:
    """The store of POST /v1.0/state/{store}, checked before the body is read."""
    return block.entry(unescape(raw_store))


async def write_state(block: StateBlock, entry: StoreEntry, raw_body: bytes, query: bytes) -> Reply:
    """POST /v1.0/state/{store} once the body is read."""
    body = decode_json(raw_body)
    if not isinstance(body, list):
        raise malformed("failed deserializing HTTP body: expected an array of state items")
    query_meta = metadata_from_query(query)
    items = [_save_item(raw, query_meta) for raw in body]
    if items:
        await block.save(entry, items)
    return NO_CONTENT_REPLY


async def delete_state(request: Request) -> Response:
    store = path_param(request, "store")
    key = path_param(request, "key")
    params = request.query_params
    item = DeleteItem(
        key=key,
        etag=request.headers.get("if-match") or None,
        metadata=query_metadata(request),
        concurrency=params.get("concurrency", ""),
        consistency=params.get("consistency", ""),
    )
    block = _block(request)
    await block.delete(block.entry(store), item)
    return no_content()


async def bulk_get_state(request: Request) -> Response:
    store = path_param(request, "store")
    block = _block(request)
    entry = block.entry(store)
    body = decode_json(await read_body(request))
    if not isinstance(body, dict):
        raise malformed("failed deserializing HTTP body: expected an object with keys")
    keys = field(body, "keys")
    keys = [] if keys is None else keys
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise malformed("failed deserializing HTTP body: keys must be an array of strings")
    string_map(field(body, "metadata"), "metadata")
    parallelism = field(body, "parallelism")
    if parallelism is not None and (not isinstance(parallelism, int) or isinstance(parallelism, bool)):
        raise malformed("failed deserializing HTTP body: parallelism must be an integer")
    items = await block.bulk_get(entry, keys)
    # Built by hand so that stored JSON is embedded as it is, not parsed and re-encoded.
    parts: list[bytes] = []
    for key, item in zip(keys, items, strict=True):
        part = b'{"key":' + json.dumps(key, ensure_ascii=False).encode()
        if item is not None:
            part += b',"data":' + raw_json(item.data)
            if item.etag:
                part += b',"etag":' + json.dumps(item.etag).encode()
            expire = _expire_text(item)
            if expire is not None:
                part += b',"metadata":{"ttlExpireTime":"' + expire.encode() + b'"}'
        parts.append(part + b"}")
    return Response(b"[" + b",".join(parts) + b"]\n", 200, media_type=JSON)


async def transaction(request: Request) -> Response:
    store = path_param(request, "store")
    block = _block(request)
    entry = block.entry(store)
    body = decode_json(await read_body(request))
    if not isinstance(body, dict):
        raise malformed("failed deserializing HTTP body: expected an object with operations")
    raw_ops = field(body, "operations")
    raw_ops = [] if raw_ops is None else raw_ops
    if not isinstance(raw_ops, list):
        raise malformed("failed deserializing HTTP body: operations must be an array")
    string_map(field(body, "metadata"), "metadata")
    block.transactional(entry)
    query_meta = query_metadata(request)
    ops: list[SaveItem | DeleteItem] = []
    for raw in raw_ops:
        if not isinstance(raw, dict):
            raise malformed("failed deserializing HTTP body: each operation must be an object")
        kind = optional_string(field(raw, "operation"), "operation")
        request_body = field(raw, "request")
        if kind not in ("upsert", "delete"):
            raise state_operation_not_supported(str(kind))
        item = _save_item(request_body, query_meta)
        if kind == "upsert":
            ops.append(item)
        else:
            ops.append(DeleteItem(item.key, item.etag, item.metadata, item.concurrency, item.consistency))
    if ops:
        await block.transact(entry, ops)
    return no_content()


async def query_state(request: Request) -> Response:
    store = path_param(request, "store")
    block = _block(request)
    page = await block.query(block.entry(store), await read_body(request))
    if not page.results:
        return no_content()
    parts: list[bytes] = []
    for result in page.results:
        entry = b'{"key":' + json.dumps(result.key, ensure_ascii=False).encode()
        entry += b',"data":' + raw_json(result.data)
        if result.etag:
            entry += b',"etag":' + json.dumps(result.etag).encode()
        parts.append(entry + b"}")
    body = b'{"results":[' + b",".join(parts) + b"]"
    if page.token:
        body += b',"token":' + json.dumps(page.token).encode()
    return Response(body + b"}\n", 200, media_type=JSON)

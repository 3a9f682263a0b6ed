"""Distributed lock endpoints (alpha): protojson bodies in, ``{"success"}`` / ``{"status"}`` out."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from runtime.blocks.lock import LockBlock
from runtime.http import protojson
from runtime.http.wire import json_response, path_param, read_body


def _block(request: Request) -> LockBlock:
    block: LockBlock = request.app.state.sidecar.blocks.get(LockBlock)
    return block


async def try_lock(request: Request) -> Response:
    store = path_param(request, "store")
    fields = protojson.message(await read_body(request))
    success = await _block(request).try_lock(
        store,
        protojson.string(fields, "resourceId", "resource_id"),
        protojson.string(fields, "lockOwner", "lock_owner"),
        protojson.int32(fields, "expiryInSeconds", "expiry_in_seconds"),
    )
    return json_response({"success": success})


async def unlock(request: Request) -> Response:
    store = path_param(request, "store")
    fields = protojson.message(await read_body(request))
    status = await _block(request).unlock(
        store,
        protojson.string(fields, "resourceId", "resource_id"),
        protojson.string(fields, "lockOwner", "lock_owner"),
    )
    return json_response({"status": int(status)})

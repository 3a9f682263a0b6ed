"""Configuration API endpoints (``v1.0`` and ``v1.0-alpha1``): get, subscribe, unsubscribe."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from runtime.blocks.configuration import ConfigurationAPIBlock, UnsubscribeError
from runtime.http.wire import json_response, no_content, path_param, query_metadata


def _block(request: Request) -> ConfigurationAPIBlock:
    block: ConfigurationAPIBlock = request.app.state.sidecar.blocks.get(ConfigurationAPIBlock)
    return block


def _keys(request: Request) -> list[str]:
    return request.query_params.getlist("key")


async def get_configuration(request: Request) -> Response:
    store = path_param(request, "store")
    items = await _block(request).get(store, _keys(request), query_metadata(request))
    if not items:
        return no_content()
    return json_response({key: item.to_json() for key, item in items.items()})


async def subscribe(request: Request) -> Response:
    store = path_param(request, "store")
    sub_id = await _block(request).subscribe(store, _keys(request), query_metadata(request))
    return json_response({"id": sub_id})


async def unsubscribe(request: Request) -> Response:
    store = path_param(request, "store")
    sub_id = path_param(request, "id")
    try:
        await _block(request).unsubscribe(store, sub_id)
    except UnsubscribeError as exc:
        return json_response({"message": str(exc)}, 500)
    return json_response({"ok": True})

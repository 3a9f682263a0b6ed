"""Secrets endpoints (docs/openapi.yaml, docs/secrets.md): Dapr's wire format in, the secrets block called."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from runtime.blocks.secrets import SecretsBlock
from runtime.http.wire import json_response, no_content, path_param, query_metadata


def _block(request: Request) -> SecretsBlock:
    block: SecretsBlock = request.app.state.sidecar.secrets
    return block


async def get_secret(request: Request) -> Response:
    store = path_param(request, "store")
    name = path_param(request, "name")
    secret = await _block(request).get(store, name, query_metadata(request))
    if not secret:
        return no_content()
    return json_response(secret)


async def bulk_get_secret(request: Request) -> Response:
    store = path_param(request, "store")
    return json_response(await _block(request).bulk_get(store, query_metadata(request)))

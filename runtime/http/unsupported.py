"""APIs of building blocks Pillion lacks: they answer daprd's error for a component that is not
loaded, so a client sees the same failure it would see against daprd without that component."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from runtime import errors
from runtime.http.wire import path_param


async def crypto(request: Request) -> Response:
    name = path_param(request, "name")
    not_loaded = request.app.state.sidecar.components.not_loaded
    if any(c.building_block == "crypto" and c.name == name for c in not_loaded):
        raise errors.crypto_provider_not_found(name)
    raise errors.crypto_providers_not_configured()


async def conversation(request: Request) -> Response:
    raise errors.conversation_not_found(path_param(request, "name"))

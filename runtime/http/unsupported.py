"""APIs of building blocks Pillion lacks: they answer daprd's error for a component that is not
loaded, so a client sees the same failure it would see against daprd without that component."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from runtime.errors import APIError
from runtime.http.wire import path_param


def _not_loaded(request: Request, block: str) -> bool:
    name = path_param(request, "name")
    return any(c.building_block == block and c.name == name for c in request.app.state.sidecar.not_loaded)


async def crypto(request: Request) -> Response:
    name = path_param(request, "name")
    if _not_loaded(request, "crypto"):
        raise APIError(400, "ERR_CRYPTO_PROVIDER_NOT_FOUND", f"crypto provider {name} not found")
    raise APIError(500, "ERR_CRYPTO_PROVIDERS_NOT_CONFIGURED", "crypto providers not configured")


async def conversation(request: Request) -> Response:
    name = path_param(request, "name")
    raise APIError(400, "ERR_CONVERSATION_NOT_FOUND", f"failed finding conversation component {name}")

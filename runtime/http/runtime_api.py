"""Runtime endpoints (docs/openapi.yaml, docs/lifecycle.md): health and metadata."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from runtime.errors import health_app_id_mismatch, health_not_ready, outbound_not_ready
from runtime.http.wire import json_response, no_content, path_param, read_body

if TYPE_CHECKING:
    from runtime.lifecycle.sidecar import Sidecar


def _sidecar(request: Request) -> Sidecar:
    sidecar: Sidecar = request.app.state.sidecar
    return sidecar


async def healthz(request: Request) -> Response:
    sidecar = _sidecar(request)
    wanted = request.query_params.get("appid")
    if wanted is not None and wanted != sidecar.options.app_id:
        raise health_app_id_mismatch(sidecar.options.app_id)
    waiting = sidecar.not_ready()
    if waiting:
        raise health_not_ready(waiting)
    return no_content()


async def healthz_outbound(request: Request) -> Response:
    sidecar = _sidecar(request)
    if not sidecar.components_ready:
        raise outbound_not_ready()
    # Pillion also pings the backends, so a probe sees a Redis that went away (daprd does not).
    down = await sidecar.unreachable_components()
    if down:
        raise outbound_not_ready(down)
    return no_content()


async def metadata(request: Request) -> Response:
    return json_response(_sidecar(request).metadata())


async def put_metadata(request: Request) -> Response:
    body = await read_body(request)
    _sidecar(request).extended[path_param(request, "key")] = body.decode("utf-8", errors="replace")
    return no_content()


async def shutdown(request: Request) -> Response:
    """204 first, then a graceful stop; ``dapr-force-shutdown: true`` exits at once, as daprd."""
    if request.headers.get("dapr-force-shutdown", "").lower() == "true":
        os._exit(0)
    asyncio.get_running_loop().call_soon(_sidecar(request).request_stop)
    return no_content()

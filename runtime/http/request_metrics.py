"""Counts every API request and its latency by building block, method and status."""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from runtime.metrics import Metrics

BLOCKS = frozenset({"state", "publish", "secrets", "metadata", "healthz"})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def building_block(path: str) -> str:
    """``/v1.0/state/s/k`` -> ``state``; anything unlisted is ``other``, so a client cannot grow
    the number of series by calling made-up paths."""
    parts = path.split("/", 3)
    if len(parts) > 2 and parts[1].startswith("v1.0") and parts[2] in BLOCKS:
        return parts[2]
    return "other"


class RequestMetricsMiddleware:
    """Pure ASGI, so the response streams through untouched; it only notes the status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = perf_counter()
        # An exception before any response is what the client will see as a 500.
        status = 500

        async def noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting_status)
        finally:
            method = scope["method"]
            self.metrics.observe_request(
                building_block(scope["path"]),
                method if method in METHODS else "other",
                status,
                perf_counter() - start,
            )

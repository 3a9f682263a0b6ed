"""API token check (reference section 6.1), before routing, as daprd does it."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

HEADER = b"dapr-api-token"
# Only these stay open with a token set: orchestrators probe them without credentials.
EXEMPT = frozenset({"/v1.0/healthz", "/v1.0/healthz/outbound"})
_REFUSAL = b"invalid api token\n"


class TokenMiddleware:
    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            # Nothing but HTTP carries the API; lifespan events carry no request.
            if scope["type"] == "lifespan":
                await self.app(scope, receive, send)
            return
        if scope["method"] == "GET" and scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        given = b""
        kept: list[tuple[bytes, bytes]] = []
        for name, value in scope["headers"]:
            if name == HEADER:
                given = value
            else:
                kept.append((name, value))
        if not hmac.compare_digest(given, self.token):
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(_REFUSAL)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": _REFUSAL})
            return
        # The token is for this sidecar only: it never travels further.
        await self.app({**scope, "headers": kept}, receive, send)

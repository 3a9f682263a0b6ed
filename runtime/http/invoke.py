"""``/v1.0/invoke/{appId}/method/{method}`` and the ``dapr-app-id`` header form, any verb.

Only the wire format lives here: finding the target and method as daprd does, and turning the
reply (status, headers, streamed body) back into an HTTP answer unchanged.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from urllib.parse import unquote

from aiohttp.http import SERVER_SOFTWARE
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from runtime.errors import APIError, body_too_large, direct_invoke_failed, direct_invoke_missing_app_id
from runtime.http.trace_context import SCOPE_KEY
from runtime.http.wire import error_response
from runtime.invocation.calls import (
    WHOLE_BODY_LIMIT,
    Call,
    Reply,
    forwarded_request_headers,
    normalize_method,
)

if TYPE_CHECKING:
    from runtime.invocation.service import ServiceInvocation

_PREFIX = "/v1.0/invoke/"
RawHeaders = list[tuple[bytes, bytes]]
# Set by the sidecar's HTTP server itself, or describing the trace of the sidecar's own span.
_REPLACED = frozenset({"date", "traceparent", "tracestate"})
_SERVER = SERVER_SOFTWARE.encode()


def _header(raw: RawHeaders, name: bytes) -> str | None:
    for key, value in raw:
        if key == name:
            return value.decode("latin-1")
    return None


def _header_target(raw: RawHeaders) -> str | None:
    target = _header(raw, b"dapr-app-id")
    if target:
        return target
    auth = _header(raw, b"authorization") or ""
    scheme, _, encoded = auth.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return password if user.lower() == "dapr-app-id" and password else None


def find_target(path: str, raw: RawHeaders) -> tuple[str, str]:
    """(app id, raw method) from the header forms, else from the (cleaned) URL path."""
    target = _header_target(raw)
    if target is not None:
        return target, unquote(path)
    if path.startswith(_PREFIX):
        rest = path[len(_PREFIX) :]
        app, sep, method = rest.partition("/method/")
        if not sep:
            app, sep, method = rest.partition("/method")
            if method:  # "/methodical": not the method separator
                sep = ""
        if sep and app:
            return unquote(app), unquote(method)
    raise direct_invoke_missing_app_id()


def new_call(service: ServiceInvocation, target: str, raw_method: str, scope: Scope) -> Call:
    """The call as the block takes it (no body yet): method cleaned, headers as daprd forwards them."""
    method = normalize_method(target, raw_method)
    headers = forwarded_request_headers(scope["headers"], service.checks_token)
    span = scope.get(SCOPE_KEY)
    if span is not None:
        headers.append(("traceparent", span.traceparent))
        if span.tracestate:
            headers.append(("tracestate", span.tracestate))
    return Call(scope["method"], method, scope["query_string"].decode("latin-1"), headers)


def answer_headers(reply: Reply) -> RawHeaders:
    """The target's headers as they came, less those this sidecar's server sets itself."""
    kept: RawHeaders = []
    for name, value in reply.headers:
        key = name.lower()
        encoded = value.encode("latin-1")
        # The target sidecar's own server name is not the app's answer.
        if key in _REPLACED or (key == "server" and encoded == _SERVER):
            continue
        kept.append((key.encode("latin-1"), encoded))
    return kept


class _LimitedBody:
    """The request body as a stream, stopped at the body limit (noted, so the answer is 413)."""

    def __init__(self, request: Request, limit: int) -> None:
        self.request = request
        self.limit = limit
        self.exceeded = False

    async def read(self) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in self.request.stream():
            size += len(chunk)
            if size > self.limit:
                self.exceeded = True
                raise body_too_large(self.limit)
            if chunk:
                yield chunk


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "transfer-encoding" in request.headers


async def invoke(request: Request) -> Response:
    scope = request.scope
    try:
        target, raw_method = find_target(scope["path"], scope["headers"])
    except APIError as exc:
        return error_response(exc)
    service: ServiceInvocation | None = request.app.state.sidecar.invocation
    if service is None:
        return error_response(direct_invoke_failed(target, "invocation is starting"))
    limit: int = request.app.state.max_body_size
    body: _LimitedBody | None = None
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        return error_response(body_too_large(limit))
    try:
        call = new_call(service, target, raw_method, scope)
        if length.isdigit() and int(length) <= WHOLE_BODY_LIMIT:
            if length != "0":
                call.buffered = await request.body()
        elif _has_body(request):
            body = _LimitedBody(request, limit)
            call.body = body.read
        reply = await service.block.invoke(target, call)
    except APIError as exc:
        return error_response(body_too_large(limit) if body is not None and body.exceeded else exc)
    return reply_response(reply)


def reply_response(reply: Reply) -> Response:
    """The target's answer as the caller gets it: whole when it was read whole, else streamed."""
    raw_headers = answer_headers(reply)
    if reply.content is not None:
        return _Whole(reply.status, raw_headers, reply.content)
    # Streamed: Starlette's response also stops reading the target when the caller goes away.
    response = StreamingResponse(_released(reply), status_code=reply.status)
    response.raw_headers = raw_headers
    return response


class _Whole(Response):
    """A small answer, sent as it came (its headers, Content-Length included), in one message."""

    def __init__(self, status: int, raw_headers: list[tuple[bytes, bytes]], content: bytes) -> None:
        self.status_code = status
        self.raw_headers = raw_headers
        self.body = content
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body})


async def _released(reply: Reply) -> AsyncIterator[bytes]:
    try:
        async for chunk in reply.body:
            yield chunk
    finally:
        await reply.release()

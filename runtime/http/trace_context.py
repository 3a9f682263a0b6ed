"""A span per API request, sent back in the ``traceparent`` response header as daprd does."""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.http.request_metrics import building_block
from runtime.tracing import Span, Tracer

# Where the request's span waits for the endpoint.
SCOPE_KEY = "pillion.span"


def request_span(request: Request) -> Span:
    """The span ``TraceContextMiddleware`` opened for this request."""
    span: Span = request.scope[SCOPE_KEY]
    return span


class TraceContextMiddleware:
    """Continues the caller's ``traceparent`` (or starts a trace) for every request but the health
    probes, and answers with the request's own ``traceparent`` (and ``tracestate``)."""

    def __init__(self, app: ASGIApp, tracer: Tracer) -> None:
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or "/healthz" in path:
            await self.app(scope, receive, send)
            return
        parent: str | None = None
        state = ""
        for name, value in scope["headers"]:
            if name == b"traceparent":
                parent = value.decode("latin-1")
            elif name == b"tracestate":
                state = value.decode("latin-1")
        tracer = self.tracer
        method = scope["method"]
        if tracer.exporting:
            # Named by building block, not path: span names must not grow with keys and topics.
            name = f"{method} /v1.0/{building_block(path)}"
            attributes = {"http.request.method": method, "url.path": path}
            span = tracer.start(name, parent, state, "server", attributes)
        else:
            span = tracer.start("", parent, state, "server")
        scope[SCOPE_KEY] = span
        added = [(b"traceparent", span.traceparent.encode())]
        if span.tracestate:
            added.append((b"tracestate", span.tracestate.encode("latin-1", errors="replace")))
        status = 500

        async def send_with_trace(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), *added]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_trace)
        finally:
            span.finish(status)

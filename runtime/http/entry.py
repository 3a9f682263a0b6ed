"""The one ASGI entry of the HTTP API: everything a request needs before and after its endpoint,
in one pass, and the hot routes served without Starlette's layers.

Per request, in this order: the raw path is cleaned as daprd cleans it (and the call logged with
``--enable-api-logging``); one walk over the headers
finds the trace context, the API token and what the hot routes read; a span continues the
caller's trace (health probes excepted); the token is checked (health probes exempt); the request
is served; the answer carries the span's ``traceparent``; the span ends and the request is counted
in the metrics, rejected ones included.

Serving: state GET and save, publish and service invocation with a small body, the calls an app
makes all the time, are matched by splitting the path and answered from a
:data:`~runtime.http.wire.Reply` tuple: no Request, Response, routing regex or middleware object
per request (an invocation whose answer streams is sent by a Starlette response). Everything else
goes to the Starlette application (router, endpoints, exception handlers), which also holds the
hot routes in its table, so it serves any hot-route request this module declines (a pubsub named
``bulk``, a large or chunked invocation body).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.errors import APIError, direct_invoke_failed, internal
from runtime.http import invoke as invoke_api
from runtime.http import pubsub as pubsub_api
from runtime.http import state as state_api
from runtime.http.auth import EXEMPT, HEADER, refusal
from runtime.http.primary import PrimaryForwarder, for_primary
from runtime.http.request_metrics import METHODS, building_block
from runtime.http.trace_context import SCOPE_KEY
from runtime.http.wire import Headers, PathUnescapeError, Reply, error_reply, receive_body, text_reply
from runtime.invocation.calls import WHOLE_BODY_LIMIT
from runtime.observability.tracing import Span

if TYPE_CHECKING:
    from runtime.lifecycle.sidecar import Sidecar
    from runtime.observability.metrics import Metrics

log = logging.getLogger("pillion.http")

_START = "http.response.start"
_BODY = "http.response.body"
_WRITES = frozenset({"POST", "PUT"})


def clean_path(raw: bytes) -> str:
    """The path daprd routes on: still escaped (``%2F`` stays inside one parameter), repeated
    slashes collapsed, a trailing slash dropped."""
    if b"?" in raw:
        raw = raw.split(b"?", 1)[0]
    path = raw.decode("latin-1")
    if "//" in path:
        path = "/" + "/".join(part for part in path.split("/") if part)
    if len(path) > 1 and path[-1] == "/":
        path = path.rstrip("/") or "/"
    return path


async def _not_http(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Only HTTP requests reach the API: a WebSocket is closed before it opens, any other kind
    of connection is dropped. Lifespan events, which carry no request, pass."""
    if scope["type"] == "lifespan":
        await app(scope, receive, send)
    elif scope["type"] == "websocket":
        log.debug("refused a WebSocket connection: the API serves HTTP only")
        await send({"type": "websocket.close", "code": 1008})
    else:
        log.debug("refused a connection of type %r: the API serves HTTP only", scope["type"])


@dataclass(frozen=True, slots=True)
class HotRoutes:
    """Which hot routes this sidecar serves (``spec.api`` of the Configuration can switch them off)."""

    get_state: bool
    save_state: bool
    publish: bool
    invoke: bool


class _Request:
    """What the hot routes read from the request, gathered in the one walk over its headers."""

    __slots__ = ("baggage", "chunked", "content_length", "content_type")

    def __init__(self) -> None:
        self.content_type = ""
        self.content_length: bytes | None = None
        self.baggage: str | None = None
        self.chunked = False

    def small_body(self) -> bool:
        """A body that is read whole before the call (none, or a declared length within the
        limit); others are streamed, which only the Starlette endpoint does."""
        if self.chunked:
            return False
        length = self.content_length
        return length is None or (length.isdigit() and int(length) <= WHOLE_BODY_LIMIT)


# A hot route answers with a Reply, or (service invocation only) with a streamed Response.
HotHandler = Callable[[Scope, Receive, _Request, Span, list[str]], Awaitable[Reply | Response]]


class ApiEntry:
    def __init__(self, app: ASGIApp, sidecar: Sidecar, hot: HotRoutes) -> None:
        self.app = app  # the Starlette application
        self.sidecar = sidecar
        self.tracer = sidecar.tracer
        self.metrics: Metrics | None = sidecar.metrics if sidecar.options.enable_metrics else None
        token = sidecar.options.api_token
        self.token = token.encode() if token else None
        self.max_body_size = sidecar.options.max_body_size
        self.hot = hot
        primary = sidecar.options.primary_port
        # In an API worker of --workers N: what only the primary sidecar can answer goes there.
        self.primary = PrimaryForwarder(primary, self.max_body_size) if primary is not None else None
        # --enable-api-logging: a line per call, as daprd's "HTTP API Called" (no query string:
        # it may hold metadata values).
        self.api_log = logging.getLogger("pillion.api") if sidecar.options.api_logging else None

    def _hot_route(self, method: str, parts: list[str], request: _Request) -> tuple[HotHandler, str] | None:
        """The hot route for a cleaned path split on ``/``, as Starlette's router would pick it."""
        count = len(parts)
        if count < 4 or parts[1] != "v1.0":
            return None
        group = parts[2]
        if group == "state":
            if count == 5 and method == "GET" and self.hot.get_state:
                return self._get_state, "state"
            if count == 4 and method in _WRITES and self.hot.save_state:
                return self._save_state, "state"
        elif (
            group == "publish"
            and count >= 5
            and parts[3] != "bulk"
            and method in _WRITES
            and self.hot.publish
        ):
            return self._publish, "publish"
        elif (
            group == "invoke"
            and count == 6
            and parts[4] == "method"
            and self.hot.invoke
            and request.small_body()
        ):
            return self._invoke, "invoke"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await _not_http(self.app, scope, receive, send)
            return
        started = perf_counter()
        path = clean_path(scope.get("raw_path") or scope["path"].encode())
        method: str = scope["method"]
        if self.primary is not None and for_primary(path):
            await self.primary.forward(scope, receive, send)
            return
        if self.api_log is not None:
            self.api_log.info("HTTP API Called: %s %s", method, path)
        parent: str | None = None
        trace_state = ""
        given: bytes | None = None
        request = _Request()
        for name, value in scope["headers"]:
            if name == b"traceparent":
                parent = value.decode("latin-1")
            elif name == b"tracestate":
                trace_state = value.decode("latin-1")
            elif name == HEADER:
                given = value
            elif name == b"content-type":
                if not request.content_type:
                    request.content_type = value.decode("latin-1")
            elif name == b"content-length":
                if request.content_length is None:
                    request.content_length = value
            elif name == b"baggage" and request.baggage is None:
                request.baggage = value.decode("latin-1")
            elif name == b"transfer-encoding":
                request.chunked = True
        span: Span | None = None
        added: Headers = []
        if path not in EXEMPT:  # the health probes have no span
            tracer = self.tracer
            if tracer.exporting:
                # Named by building block, not path: span names must not grow with keys and topics.
                name = f"{method} /v1.0/{building_block(path)}"
                attributes = {"http.request.method": method, "url.path": path}
                span = tracer.start(name, parent, trace_state, "server", attributes)
            else:
                span = tracer.start("", parent, trace_state, "server")
            added.append((b"traceparent", span.traceparent.encode()))
            if span.tracestate:
                added.append((b"tracestate", span.tracestate.encode("latin-1", errors="replace")))
        # An exception before any answer is what the client will see as a 500.
        status = 500
        block = ""
        try:
            token = self.token
            if (
                token is not None
                and not (method == "GET" and path in EXEMPT)
                and not hmac.compare_digest(given or b"", token)
            ):
                status, headers, body = refusal()
                await send({"type": _START, "status": status, "headers": headers + added})
                await send({"type": _BODY, "body": body})
                return
            parts = path.split("/", 5) if span is not None else []
            hot = self._hot_route(method, parts, request) if parts else None
            if hot is None or span is None:
                status = await self._through_starlette(scope, receive, send, path, span, added, given)
                return
            handler, block = hot
            try:
                answer = await handler(scope, receive, request, span, parts)
                if isinstance(answer, Response):
                    status = answer.status_code
                    await answer(scope, receive, _adding(send, added))
                    return
                status, headers, body = answer
            except ClientDisconnect:
                # Nobody is left to answer; one line says so, as on the other routes.
                log.debug("client left during %s %s before its request was complete", method, path)
                return
            except APIError as exc:
                status, headers, body = error_reply(exc)
            except PathUnescapeError as exc:
                status, headers, body = text_reply(400, f"failed to unescape path parameter: {exc}")
            except Exception:
                log.exception("unexpected error on %s %s", method, path)
                status, headers, body = error_reply(internal())
            if added:
                headers = headers + added
            await send({"type": _START, "status": status, "headers": headers})
            await send({"type": _BODY, "body": body})
        finally:
            if span is not None:
                span.finish(status)
            metrics = self.metrics
            if metrics is not None:
                metrics.observe_request(
                    block or building_block(path),
                    method if method in METHODS else "other",
                    status,
                    perf_counter() - started,
                )

    async def _through_starlette(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        path: str,
        span: Span | None,
        added: Headers,
        given: bytes | None,
    ) -> int:
        """Serve the request with the Starlette application; the status it answered."""
        scope["path"] = path
        if span is not None:
            scope[SCOPE_KEY] = span
        if given is not None and self.token is not None:
            # The token is for this sidecar only: it never travels further.
            scope["headers"] = [(name, value) for name, value in scope["headers"] if name != HEADER]
        status = 500

        async def answer(message: Message) -> None:
            nonlocal status
            if message["type"] == _START:
                status = message["status"]
                if added:
                    message = {**message, "headers": [*message.get("headers", ()), *added]}
            await send(message)

        await self.app(scope, receive, answer)
        return status

    # --- the hot routes --------------------------------------------------------------------------

    async def _get_state(
        self, scope: Scope, receive: Receive, request: _Request, span: Span, parts: list[str]
    ) -> Reply:
        return await state_api.read_state(self.sidecar.state, parts[3], parts[4])

    async def _save_state(
        self, scope: Scope, receive: Receive, request: _Request, span: Span, parts: list[str]
    ) -> Reply:
        block = self.sidecar.state
        store = state_api.check_save_target(block, parts[3])
        body = await receive_body(receive, request.content_length, self.max_body_size)
        return await state_api.write_state(block, store, body, scope["query_string"])

    async def _publish(
        self, scope: Scope, receive: Receive, request: _Request, span: Span, parts: list[str]
    ) -> Reply:
        topic = parts[4] if len(parts) == 5 else "/".join(parts[4:])
        target = pubsub_api.publish_target(self.sidecar.pubsub, parts[3], topic, scope["query_string"])
        body = await receive_body(receive, request.content_length, self.max_body_size)
        await pubsub_api.publish_body(target, body, request.content_type, request.baggage, span)
        return 204, [], b""

    async def _invoke(
        self, scope: Scope, receive: Receive, request: _Request, span: Span, parts: list[str]
    ) -> Reply | Response:
        path = "/".join(parts)
        scope["path"] = path
        scope[SCOPE_KEY] = span
        target, raw_method = invoke_api.find_target(path, scope["headers"])
        service = self.sidecar.invocation
        if service is None:
            raise direct_invoke_failed(target, "invocation is starting")
        call = invoke_api.new_call(service, target, raw_method, scope)
        body = await receive_body(receive, request.content_length, self.max_body_size)
        if body:
            call.buffered = body
        reply = await service.block.invoke(target, call)
        if reply.content is None:
            return invoke_api.reply_response(reply)
        return reply.status, invoke_api.answer_headers(reply), reply.content


def _adding(send: Send, added: Headers) -> Send:
    """``send``, with ``added`` appended to the answer's headers."""
    if not added:
        return send

    async def adding(message: Message) -> None:
        if message["type"] == _START:
            message = {**message, "headers": [*message.get("headers", ()), *added]}
        await send(message)

    return adding

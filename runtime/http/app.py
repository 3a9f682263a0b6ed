"""The Starlette application: routes, Dapr path rules, the fallback route and error rendering."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from runtime.errors import APIError, internal
from runtime.http import admin, invoke, pubsub, runtime_api, secrets, state
from runtime.http.auth import TokenMiddleware
from runtime.http.request_metrics import RequestMetricsMiddleware
from runtime.http.trace_context import TraceContextMiddleware
from runtime.http.wire import PathUnescapeError, error_response

if TYPE_CHECKING:
    from runtime.configuration import Configuration
    from runtime.sidecar import Sidecar

log = logging.getLogger("pillion.http")
Endpoint = Callable[[Request], Awaitable[Response]]
VERSIONS = ("v1.0", "v1.0-alpha1", "v1.0-alpha2", "v1.0-beta1")


class DaprRoute(Route):
    """A route whose method mismatch is a plain miss.

    daprd registers its fallback as both the not-found and the method-not-allowed handler, so a
    known path with the wrong method must reach the fallback, not a 405. Only the methods given
    are served: Starlette would add HEAD to every GET route, which daprd's router does not.
    """

    def __init__(self, path: str, endpoint: Endpoint, methods: list[str]) -> None:
        super().__init__(path, endpoint, methods=methods)
        self.methods = set(methods)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is Match.PARTIAL:
            return Match.NONE, {}
        return match, child


class DaprPathMiddleware:
    """Route on the raw path, cleaned as daprd cleans it.

    Matching the still-escaped path keeps ``%2F`` inside one path parameter; the endpoints then
    query-unescape each parameter (``wire.path_param``). Repeated slashes collapse and a trailing
    slash is dropped.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await _not_http(self.app, scope, receive, send)
            return
        raw: bytes = scope.get("raw_path") or scope["path"].encode()
        path = raw.split(b"?", 1)[0].decode("latin-1")
        if "//" in path:
            path = "/" + "/".join(part for part in path.split("/") if part)
        if len(path) > 1 and path.endswith("/"):
            path = path.rstrip("/") or "/"
        scope = {**scope, "path": path}
        await self.app(scope, receive, send)


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


async def _fallback_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Unknown paths and wrong methods land here: service invocation, as in daprd (the
    ``dapr-app-id`` header form, else 404 ``ERR_DIRECT_INVOKE``)."""
    response = await invoke.invoke(Request(scope, receive))
    await response(scope, receive, send)


def _served(config: Configuration, candidate: BaseRoute) -> bool:
    if not isinstance(candidate, Route):
        return True
    version, _, rest = candidate.path[1:].partition("/")
    return config.api_enabled(version, rest)


def _router_default(routes: list[BaseRoute]) -> ASGIApp:
    """What daprd's router answers with no fallback: 405 for a known path, else Go's 404 text."""

    async def default(scope: Scope, receive: Receive, send: Send) -> None:
        known = any(isinstance(r, Route) and Route.matches(r, scope)[0] is Match.PARTIAL for r in routes)
        response = Response(status_code=405) if known else PlainTextResponse("404 page not found\n", 404)
        await response(scope, receive, send)

    return default


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return error_response(exc)


async def _unescape_error(request: Request, exc: Exception) -> Response:
    return PlainTextResponse(f"failed to unescape path parameter: {exc}", 400)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client hung up (or missed the body deadline) mid-request: nobody is left to answer.
    log.debug("client left during %s %s before its request was complete", request.method, request.url.path)
    return Response(status_code=400)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(internal())


def route(path: str, endpoint: Endpoint, methods: list[str], version: str = "v1.0") -> BaseRoute:
    return DaprRoute(f"/{version}{path}", endpoint, methods=methods)


def state_routes() -> list[BaseRoute]:
    write = ["POST", "PUT"]
    # Most frequent first: the router tries routes in order. A GET of the key "bulk" is a key read,
    # as in daprd, since the bulk route only takes POST and PUT.
    return [
        route("/state/{store}/{key}", state.get_state, ["GET"]),
        route("/state/{store}", state.save_state, write),
        route("/state/{store}/bulk", state.bulk_get_state, write),
        route("/state/{store}/transaction", state.transaction, write),
        route("/state/{store}/{key}", state.delete_state, ["DELETE"]),
        route("/state/{store}/query", state.query_state, write, version="v1.0-alpha1"),
    ]


def pubsub_routes() -> list[BaseRoute]:
    write = ["POST", "PUT"]
    return [
        route("/publish/bulk/{pubsub}/{topic:path}", pubsub.bulk_publish, write),
        route("/publish/bulk/{pubsub}/{topic:path}", pubsub.bulk_publish, write, version="v1.0-alpha1"),
        route("/publish/{pubsub}/{topic:path}", pubsub.publish, write),
        # `/publish/p/` arrives here with its slash dropped: daprd answers ERR_TOPIC_NAME_EMPTY.
        route("/publish/{pubsub}", pubsub.publish, write),
    ]


def secrets_routes() -> list[BaseRoute]:
    return [
        route("/secrets/{store}/bulk", secrets.bulk_get_secret, ["GET"]),
        route("/secrets/{store}/{name}", secrets.get_secret, ["GET"]),
    ]


def runtime_routes() -> list[BaseRoute]:
    return [
        route("/healthz", runtime_api.healthz, ["GET"]),
        route("/healthz/outbound", runtime_api.healthz_outbound, ["GET"]),
        route("/metadata", runtime_api.metadata, ["GET"]),
        route("/metadata/{key}", runtime_api.put_metadata, ["PUT"]),
        route("/shutdown", runtime_api.shutdown, ["POST"]),
    ]


def invoke_routes() -> list[BaseRoute]:
    # Other verbs reach the same endpoint through the fallback.
    verbs = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    return [route("/invoke/{appId}/method/{method:path}", invoke.invoke, verbs)]


def create_app(sidecar: Sidecar, extra_routes: list[BaseRoute] | None = None) -> ASGIApp:
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        APIError: _api_error,
        PathUnescapeError: _unescape_error,
        ClientDisconnect: _client_gone,
        Exception: _unexpected,
    }
    # Invocation first: its calls go through the whole app again on the target, and a route
    # missed costs every request the others' matching.
    routes = (
        invoke_routes()
        + state_routes()
        + pubsub_routes()
        + runtime_routes()
        + secrets_routes()
        + (extra_routes or [])
    )
    routes += [route(path, endpoint, methods, admin.VERSION) for path, endpoint, methods in admin.routes()]
    # Configuration spec.api switches APIs off by not registering them, as daprd does.
    config = sidecar.configuration
    routes = [r for r in routes if _served(config, r)]
    app = Starlette(routes=routes, exception_handlers=handlers)
    # The fallback is service invocation's route: switched off with it, leaving the router's own.
    app.router.default = _fallback_app if config.api_enabled("v1.0", "invoke/*") else _router_default(routes)
    app.router.redirect_slashes = False  # DaprPathMiddleware already cleaned the path
    app.state.sidecar = sidecar
    app.state.max_body_size = sidecar.options.max_body_size
    guarded: ASGIApp = app
    if sidecar.options.api_token:
        guarded = TokenMiddleware(app, sidecar.options.api_token)
    if sidecar.options.enable_metrics:
        # Inside the path cleaning, so the block is read from the clean path; outside the token
        # check, so rejected calls are counted too.
        guarded = RequestMetricsMiddleware(guarded, sidecar.metrics)
    if sidecar.options.api_logging:
        guarded = _api_logging(guarded)
    # Every response but the health probes' carries the request's traceparent.
    return DaprPathMiddleware(TraceContextMiddleware(guarded, sidecar.tracer))


def _api_logging(app: ASGIApp) -> ASGIApp:
    """--enable-api-logging: a line per call, as daprd's ``HTTP API Called`` (no query: it may hold
    metadata values)."""
    api_log = logging.getLogger("pillion.api")

    async def logged(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            api_log.info("HTTP API Called: %s %s", scope["method"], scope["path"])
        await app(scope, receive, send)

    return logged

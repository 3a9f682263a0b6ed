"""The Starlette application (routes, the fallback route, error rendering) behind the API's one
ASGI entry (runtime.http.entry: path cleaning, trace context, token, metrics, hot routes)."""

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
from runtime.http import (
    admin,
    bindings,
    configuration,
    invoke,
    lock,
    pubsub,
    runtime_api,
    secrets,
    state,
    unsupported,
)
from runtime.http.entry import ApiEntry, HotRoutes, clean_path
from runtime.http.wire import PathUnescapeError, error_response

if TYPE_CHECKING:
    from runtime.lifecycle.sidecar import Sidecar
    from runtime.resources.configuration import Configuration

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
    """Route on the raw path, cleaned as daprd cleans it (``entry.clean_path``), for a Starlette
    application served without the API entry (the benchmark's Starlette baseline).

    Matching the still-escaped path keeps ``%2F`` inside one path parameter; the endpoints then
    query-unescape each parameter (``wire.path_param``).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = {**scope, "path": clean_path(scope.get("raw_path") or scope["path"].encode())}
        await self.app(scope, receive, send)


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


# The hot routes, which runtime.http.entry serves itself when they are switched on.
GET_STATE = "/state/{store}/{key}"
SAVE_STATE = "/state/{store}"
PUBLISH = "/publish/{pubsub}/{topic:path}"


def state_routes() -> list[BaseRoute]:
    write = ["POST", "PUT"]
    # Most frequent first: the router tries routes in order. A GET of the key "bulk" is a key read,
    # as in daprd, since the bulk route only takes POST and PUT.
    return [
        route(GET_STATE, state.get_state, ["GET"]),
        route(SAVE_STATE, state.save_state, write),
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
        route(PUBLISH, pubsub.publish, write),
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


def bindings_routes() -> list[BaseRoute]:
    return [route("/bindings/{name}", bindings.invoke, ["POST", "PUT"])]


def configuration_routes() -> list[BaseRoute]:
    routes: list[BaseRoute] = []
    for version in ("v1.0", "v1.0-alpha1"):
        routes += [
            route("/configuration/{store}/subscribe", configuration.subscribe, ["GET"], version=version),
            route(
                "/configuration/{store}/{id}/unsubscribe", configuration.unsubscribe, ["GET"], version=version
            ),
            route("/configuration/{store}", configuration.get_configuration, ["GET"], version=version),
        ]
    return routes


def lock_routes() -> list[BaseRoute]:
    alpha = "v1.0-alpha1"
    return [
        route("/lock/{store}", lock.try_lock, ["POST"], version=alpha),
        route("/unlock/{store}", lock.unlock, ["POST"], version=alpha),
    ]


def unsupported_routes() -> list[BaseRoute]:
    alpha = "v1.0-alpha1"
    return [
        route("/crypto/{name}/encrypt", unsupported.crypto, ["PUT"], version=alpha),
        route("/crypto/{name}/decrypt", unsupported.crypto, ["PUT"], version=alpha),
        route("/conversation/{name}/converse", unsupported.conversation, ["POST"], version=alpha),
        route("/conversation/{name}/converse", unsupported.conversation, ["POST"], version="v1.0-alpha2"),
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
    # missed costs every request the others' matching. The lock API next to the other
    # per-request ones; the rarely called runtime, configuration and admin routes after.
    routes = (
        invoke_routes()
        + state_routes()
        + pubsub_routes()
        + lock_routes()
        + runtime_routes()
        + secrets_routes()
        + bindings_routes()
        + configuration_routes()
        + unsupported_routes()
        + (extra_routes or [])
    )
    routes += [route(path, endpoint, methods, admin.VERSION) for path, endpoint, methods in admin.routes()]
    # Configuration spec.api switches APIs off by not registering them, as daprd does.
    config = sidecar.configuration
    routes = [r for r in routes if _served(config, r)]
    app = Starlette(routes=routes, exception_handlers=handlers)
    # The fallback is service invocation's route: switched off with it, leaving the router's own.
    app.router.default = _fallback_app if config.api_enabled("v1.0", "invoke/*") else _router_default(routes)
    app.router.redirect_slashes = False  # the entry already cleaned the path
    app.state.sidecar = sidecar
    app.state.max_body_size = sidecar.options.max_body_size
    served = {r.path for r in routes if isinstance(r, Route)}
    hot = HotRoutes(
        get_state=f"/v1.0{GET_STATE}" in served,
        save_state=f"/v1.0{SAVE_STATE}" in served,
        publish=f"/v1.0{PUBLISH}" in served,
        invoke="/v1.0/invoke/{appId}/method/{method:path}" in served,
    )
    return ApiEntry(app, sidecar, hot)

"""The dashboard's web server: the static page, its JSON API, and the calls it passes on to a
sidecar's admin API for dead letters.

Guards, because a page on loopback is still reachable from any web page the browser opens:

* with an API token, every ``/api/`` call must carry it (the page asks for it once and keeps it in
  the tab's session storage); the page and its scripts are served without it;
* on loopback, requests whose ``Host`` is not a loopback name are refused (DNS rebinding);
* changing calls must carry ``x-pillion-dashboard: 1``, which a cross-site form cannot send and a
  cross-site script may not without a CORS preflight that this server never answers;
* ``--read-only`` refuses replay and purge.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from runtime.dashboard.poller import Poller

log = logging.getLogger("pillion.dashboard")
STATIC = Path(__file__).parent / "static"
# How long the page's request for a newer snapshot may wait for one.
LONG_POLL_SECONDS = 10.0
GATHER_SECONDS = 0.2
# Replaying many messages takes a while; the page waits for the sidecar's answer.
ADMIN_TIMEOUT = 60.0
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})


@dataclass(frozen=True)
class DashboardOptions:
    address: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    read_only: bool = False
    interval: float = 1.0
    # Listening beyond loopback (--allow-remote-access): any Host is accepted.
    remote: bool = False


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"errorCode": code, "message": message}, status)


class GuardMiddleware:
    def __init__(self, app: ASGIApp, options: DashboardOptions) -> None:
        self.app = app
        self.options = options
        self.token = options.token.encode() if options.token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        refusal: Response | None = None
        host = headers.get(b"host", b"").decode("latin-1").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if not self.options.remote and name not in _LOOPBACK_HOSTS:
            refusal = _error(403, "ERR_DASHBOARD_HOST", "this dashboard answers only to a loopback host name")
        elif scope["path"].startswith("/api/"):
            given = headers.get(b"dapr-api-token", b"")
            if self.token is not None and not hmac.compare_digest(given, self.token):
                refusal = _error(401, "ERR_DASHBOARD_TOKEN", "the API token is missing or wrong")
            elif scope["method"] != "GET" and headers.get(b"x-pillion-dashboard") != b"1":
                refusal = _error(
                    403, "ERR_DASHBOARD_CSRF", "changing calls need the x-pillion-dashboard: 1 header"
                )
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(poller: Poller, options: DashboardOptions) -> ASGIApp:
    admin = httpx.AsyncClient(
        headers={"dapr-api-token": options.token} if options.token else {}, timeout=ADMIN_TIMEOUT
    )

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    async def snapshot(request: Request) -> Response:
        text = request.query_params.get("since", "0")
        since = int(text) if text.isdigit() else 0
        if request.query_params.get("wait") == "1" and since >= poller.seq:
            await poller.wait_after(since, LONG_POLL_SECONDS)
            # Sidecars refreshed at about the same moment go into one snapshot.
            await asyncio.sleep(GATHER_SECONDS)
        body = poller.snapshot(since)
        body["readOnly"] = options.read_only
        return JSONResponse(body, headers={"cache-control": "no-store"})

    async def dead_letters(request: Request) -> Response:
        """Passed on to the sidecar's admin API, which holds the broker connections."""
        pid_text = request.path_params["pid"]
        base = poller.sidecar_url(int(pid_text)) if pid_text.isdigit() else None
        if base is None:
            return _error(404, "ERR_DASHBOARD_APP", f"no sidecar with pid {pid_text} is running")
        rest = request.path_params["rest"]
        if request.method == "POST" and options.read_only:
            return _error(403, "ERR_DASHBOARD_READ_ONLY", "the dashboard was started with --read-only")
        path = "/v1.0-alpha1/pillion/deadletters/" + "/".join(
            quote(part, safe="") for part in rest.split("/")
        )
        try:
            answer = await admin.request(
                request.method,
                base + path,
                params=request.query_params,
                content=await request.body() if request.method == "POST" else None,
                headers={"content-type": "application/json"},
            )
        except httpx.HTTPError as exc:
            return _error(502, "ERR_DASHBOARD_SIDECAR", f"the sidecar did not answer: {exc}")
        return Response(answer.content, answer.status_code, media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(poller.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await admin.aclose()
            await poller.aclose()

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/api/snapshot", snapshot, methods=["GET"]),
        Route("/api/apps/{pid}/deadletters/{rest:path}", dead_letters, methods=["GET", "POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    return GuardMiddleware(app, options)


async def serve(options: DashboardOptions) -> None:
    poller = Poller(options.interval, options.token)
    config = uvicorn.Config(
        create_app(poller, options),
        host=options.address,
        port=options.port,
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="on",
        # A page's long poll must not hold up stopping.
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    shown = f"[{options.address}]" if ":" in options.address else options.address
    log.info("dashboard on http://%s:%d/", shown, options.port)
    await server.serve()
    if not server.started:
        raise OSError(f"could not listen on {options.address}:{options.port}")

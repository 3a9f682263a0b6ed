"""The baselines for latency and CPU cost: Pillion's server stack with no building block behind it.
A state GET answers a fixed body, a publish reads the body and answers 204.

    python -m bench.noop_server PORT           # uvicorn + httptools + uvloop + Starlette + Dapr paths
    python -m bench.noop_server PORT --bare    # the same server with a bare ASGI callable: the floor

``--bare`` is the floor of the CPU-cost section (issue 11): what uvicorn, httptools and uvloop
cost per request with no framework at all, so a ratio to it is what Pillion adds on top.
"""

from __future__ import annotations

import asyncio
import sys

import uvicorn
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from runtime.http.app import DaprPathMiddleware, DaprRoute

_GET_HEADERS = [(b"content-type", b"application/json"), (b"etag", b"1"), (b"content-length", b"7")]


async def noop(request: Request) -> Response:
    return Response(b'{"n":1}', 200, {"etag": "1"}, media_type="application/json")


async def noop_publish(request: Request) -> Response:
    await request.body()
    return Response(status_code=204)


async def bare(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["method"] == "GET":
        await send({"type": "http.response.start", "status": 200, "headers": _GET_HEADERS})
        await send({"type": "http.response.body", "body": b'{"n":1}'})
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def starlette_app() -> ASGIApp:
    app = Starlette(
        routes=[
            DaprRoute("/v1.0/state/{store}/{key}", noop, methods=["GET"]),
            DaprRoute("/v1.0/publish/{pubsub}/{topic:path}", noop_publish, methods=["POST"]),
        ]
    )
    return DaprPathMiddleware(app)


def main() -> None:
    port = int(sys.argv[1])
    config = uvicorn.Config(
        bare if "--bare" in sys.argv[2:] else starlette_app(),
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        http="httptools",
        server_header=False,
        proxy_headers=False,
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()

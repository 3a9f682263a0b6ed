"""The baseline for latency: Pillion's own server stack (uvicorn + httptools + uvloop + Starlette +
Dapr path handling) with no building block behind it: a state GET answers a fixed body, a publish
reads the body and answers 204.

    python -m bench.noop_server PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvicorn
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from runtime.http.app import DaprPathMiddleware, DaprRoute


async def noop(request: Request) -> Response:
    return Response(b'{"n":1}', 200, {"etag": "1"}, media_type="application/json")


async def noop_publish(request: Request) -> Response:
    await request.body()
    return Response(status_code=204)


def main() -> None:
    port = int(sys.argv[1])
    app = Starlette(
        routes=[
            DaprRoute("/v1.0/state/{store}/{key}", noop, methods=["GET"]),
            DaprRoute("/v1.0/publish/{pubsub}/{topic:path}", noop_publish, methods=["POST"]),
        ]
    )
    config = uvicorn.Config(
        DaprPathMiddleware(app),
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

"""The app of the configuration benchmark: records how long each update took to arrive.

    python -m bench.config_app PORT

``POST /configuration/<store>/<key>``: reads CLOCK_MONOTONIC first; the update's value is the time
(same clock, ns) the benchmark wrote it to Redis, so the difference is write-to-app latency; 200.
``GET /stats``: ``{"latencies_ns": [...]}`` so far.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import uvicorn
import uvloop

Scope = dict[str, Any]


class ConfigApp:
    def __init__(self) -> None:
        self.latencies_ns: list[int] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        now = time.monotonic_ns()
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if scope["path"].startswith("/configuration/"):
            for item in json.loads(body)["items"].values():
                if item.get("value", "").isdigit():
                    self.latencies_ns.append(now - int(item["value"]))
            payload = b""
        else:
            payload = json.dumps({"latencies_ns": self.latencies_ns}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def main() -> None:
    config = uvicorn.Config(
        ConfigApp(),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_config=None,
        access_log=False,
        lifespan="off",
        http="httptools",
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()

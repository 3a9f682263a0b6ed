"""The subscriber app of the pub/sub benchmarks: records when each event arrives.

    python -m bench.subscriber PORT PUBSUB TOPIC

A bare ASGI app on uvicorn (httptools, uvloop), so the app is not what limits delivery:

* ``GET /dapr/subscribe``: one subscription, ``PUBSUB``/``TOPIC`` to ``/events``;
* ``POST /events``: reads the clock first (CLOCK_MONOTONIC, as bench.loadgen does), keeps the
  arrival time and, when the event's data holds a send time ``t``, the end-to-end latency; 200;
* ``GET /stats``: ``{"count", "first_ns", "last_ns", "latencies_ns"}`` so far.
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
Receive = Any
Send = Any


class Subscriber:
    def __init__(self, pubsub: str, topic: str) -> None:
        self.subscriptions = json.dumps([{"pubsubname": pubsub, "topic": topic, "route": "/events"}]).encode()
        self.count = 0
        self.first_ns = 0
        self.last_ns = 0
        self.latencies_ns: list[int] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        now = time.monotonic_ns()
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/events":
            body = b""
            more = True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
            self.record(now, body)
            await self.reply(send, 200, b"")
        elif path == "/dapr/subscribe":
            await self.reply(send, 200, self.subscriptions)
        elif path == "/stats":
            stats = {
                "count": self.count,
                "first_ns": self.first_ns,
                "last_ns": self.last_ns,
                "latencies_ns": self.latencies_ns,
            }
            await self.reply(send, 200, json.dumps(stats).encode())
        else:
            await self.reply(send, 404, b"")

    def record(self, now: int, body: bytes) -> None:
        if not self.count:
            self.first_ns = now
        self.count += 1
        self.last_ns = now
        try:
            event = json.loads(body)
        except ValueError:
            return
        data = event.get("data") if isinstance(event, dict) else None
        if isinstance(data, dict) and isinstance(data.get("t"), int):
            self.latencies_ns.append(now - data["t"])

    @staticmethod
    async def reply(send: Send, status: int, body: bytes) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def main() -> None:
    port, pubsub, topic = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    config = uvicorn.Config(
        Subscriber(pubsub, topic),
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        http="httptools",
        server_header=False,
        date_header=False,
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()

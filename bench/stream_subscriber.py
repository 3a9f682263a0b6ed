"""A streaming subscriber on Pillion's gRPC API that acks every event at once and times them.

    python -m bench.stream_subscriber HOST:PORT PUBSUB TOPIC COUNT TIMEOUT

Prints JSON ``{"count", "first_ns", "last_ns"}`` (CLOCK_MONOTONIC) once COUNT events arrived, or
fails after TIMEOUT seconds. Raw protobuf messages on one bidirectional stream, as the official
SDKs send them.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator

import grpc
import uvloop
from dapr.proto.runtime.v1 import appcallback_pb2, dapr_pb2_grpc, pubsub_pb2


async def subscribe(target: str, pubsub: str, topic: str, count: int) -> dict[str, int]:
    acks: asyncio.Queue[pubsub_pb2.SubscribeTopicEventsRequestAlpha1 | None] = asyncio.Queue()
    success = appcallback_pb2.TopicEventResponse(status=appcallback_pb2.TopicEventResponse.SUCCESS)

    async def requests() -> AsyncIterator[pubsub_pb2.SubscribeTopicEventsRequestAlpha1]:
        yield pubsub_pb2.SubscribeTopicEventsRequestAlpha1(
            initial_request=pubsub_pb2.SubscribeTopicEventsRequestInitialAlpha1(
                pubsub_name=pubsub, topic=topic
            )
        )
        while (ack := await acks.get()) is not None:
            yield ack

    first = last = seen = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = dapr_pb2_grpc.DaprStub(channel)  # type: ignore[no-untyped-call]
        stream = stub.SubscribeTopicEventsAlpha1(requests())
        async for response in stream:
            if not response.HasField("event_message"):
                continue
            now = time.monotonic_ns()
            first = first or now
            last = now
            seen += 1
            processed = pubsub_pb2.SubscribeTopicEventsRequestProcessedAlpha1(
                id=response.event_message.id, status=success
            )
            acks.put_nowait(pubsub_pb2.SubscribeTopicEventsRequestAlpha1(event_processed=processed))
            if seen >= count:
                break
        acks.put_nowait(None)
        stream.cancel()
    return {"count": seen, "first_ns": first, "last_ns": last}


def main() -> None:
    target, pubsub, topic, count, timeout = sys.argv[1:6]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        found = runner.run(asyncio.wait_for(subscribe(target, pubsub, topic, int(count)), float(timeout)))
    print(json.dumps(found))


if __name__ == "__main__":
    main()

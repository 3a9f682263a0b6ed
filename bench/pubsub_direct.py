"""The pub/sub baselines: the broker used directly from Python, no HTTP and no sidecar.

    python -m bench.pubsub_direct redis|jetstream URL publish|e2e|throughput [options]

What a careful Python program does with the broker's own client, shaped as Pillion's component
does it, so the pair compares like with like:

* redis: ``XADD`` to publish; one consumer of a group reading with ``XREADGROUP`` no more entries
  than it has free handler slots, each entry handled in a task of its own and ``XACK``-ed alone.
* jetstream: ``js.publish`` (waits for the stream's acknowledgement); a durable pull consumer
  fetching no more than the free slots, each message acknowledged alone.

Modes, each printing JSON:

* ``publish``: publish at ``--rate`` over ``--connections`` workers for ``--seconds``: the publish
  latency.
* ``e2e``: the same while consuming; each payload carries its CLOCK_MONOTONIC send time, so the
  consumer's receive time gives the end-to-end latency.
* ``throughput``: ``--messages`` already published, then consumed: deliveries per second from the
  first to the last.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, Protocol, cast

import uvloop

from bench.common import Latency
from bench.pacing import at_fixed_rate

# A handler gets the payload and its receive time (monotonic ns).
Handler = Callable[[bytes, int], None]


class Broker(Protocol):
    async def open(self) -> None: ...
    async def publish(self, payload: bytes) -> None: ...
    async def fill(self, payloads: list[bytes]) -> None: ...
    async def consume(self, handler: Handler, slots: int, stop: asyncio.Event) -> None: ...
    async def close(self) -> None: ...


class RedisStreams:
    def __init__(self, url: str, topic: str, workers: int) -> None:
        from redis.asyncio import Redis

        self.url = url
        self.stream = topic
        self.group = "bench"
        # One connection per publishing worker, and some for the acknowledgements.
        self.client = Redis.from_url(url, max_connections=workers + 16)

    async def open(self) -> None:
        await self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)

    async def publish(self, payload: bytes) -> None:
        await self.client.xadd(self.stream, {"data": payload})

    async def fill(self, payloads: list[bytes]) -> None:
        for start in range(0, len(payloads), 1000):
            async with self.client.pipeline(transaction=False) as pipe:
                for payload in payloads[start : start + 1000]:
                    pipe.xadd(self.stream, {"data": payload})
                await pipe.execute()

    async def consume(self, handler: Handler, slots: int, stop: asyncio.Event) -> None:
        from redis.asyncio import Redis

        reader = Redis.from_url(self.url)
        held: set[asyncio.Task[None]] = set()
        freed = asyncio.Event()

        async def handle(entry_id: bytes, fields: dict[bytes, bytes]) -> None:
            handler(fields[b"data"], time.monotonic_ns())
            await self.client.xack(self.stream, self.group, entry_id)

        def done(task: asyncio.Task[None]) -> None:
            held.discard(task)
            freed.set()

        try:
            while not stop.is_set():
                free = slots - len(held)
                if free <= 0:
                    freed.clear()
                    await freed.wait()
                    continue
                reply = await reader.xreadgroup(
                    self.group, "consumer-1", {self.stream: ">"}, count=free, block=100
                )
                # RESP2 answers [[stream, [(id, fields), ...]]].
                for _, entries in cast(list[list[Any]], reply):
                    for entry_id, fields in entries:
                        task = asyncio.create_task(handle(entry_id, fields))
                        held.add(task)
                        task.add_done_callback(done)
            if held:
                await asyncio.wait(held)
        finally:
            await reader.aclose()

    async def close(self) -> None:
        await self.client.delete(self.stream)
        await self.client.aclose()


class JetStream:
    def __init__(self, url: str, subject: str) -> None:
        self.url = url
        self.subject = subject
        self.nc: Any = None
        self.js: Any = None

    async def open(self) -> None:
        import nats

        self.nc = await nats.connect(self.url)
        self.js = self.nc.jetstream()

    async def publish(self, payload: bytes) -> None:
        await self.js.publish(self.subject, payload)

    async def fill(self, payloads: list[bytes]) -> None:
        for start in range(0, len(payloads), 200):
            await asyncio.gather(*(self.publish(p) for p in payloads[start : start + 200]))

    async def consume(self, handler: Handler, slots: int, stop: asyncio.Event) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        durable = f"bench_{uuid.uuid4().hex[:8]}"
        stream = await self.js.find_stream_name_by_subject(self.subject)
        config = ConsumerConfig(
            durable_name=durable,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            filter_subject=self.subject,
        )
        await self.js.add_consumer(stream, config)
        pull = await self.js.pull_subscribe_bind(durable=durable, stream=stream)
        held: set[asyncio.Task[None]] = set()
        freed = asyncio.Event()

        async def handle(msg: Any) -> None:
            handler(msg.data, time.monotonic_ns())
            await msg.ack()

        def done(task: asyncio.Task[None]) -> None:
            held.discard(task)
            freed.set()

        while not stop.is_set():
            free = slots - len(held)
            if free <= 0:
                freed.clear()
                await freed.wait()
                continue
            try:
                messages = await pull.fetch(free, timeout=0.2)
            except TimeoutError:
                continue
            for msg in messages:
                task = asyncio.create_task(handle(msg))
                held.add(task)
                task.add_done_callback(done)
        if held:
            await asyncio.wait(held)
        await pull.unsubscribe()

    async def close(self) -> None:
        await self.nc.close()


def payload(padding: int, sent_ns: int | None = None) -> bytes:
    """A JSON payload about the size of Pillion's CloudEvent envelope."""
    return json.dumps({"t": sent_ns, "pad": "x" * padding}).encode()


class Tally:
    """Values from the handler, and an event for when ``expect``-ed many have come."""

    def __init__(self) -> None:
        self.values: list[int] = []
        self.target: int | None = None
        self.reached = asyncio.Event()

    def add(self, value: int) -> None:
        self.values.append(value)
        self._check()

    def expect(self, count: int) -> None:
        self.target = count
        self._check()

    def _check(self) -> None:
        if self.target is not None and len(self.values) >= self.target:
            self.reached.set()

    async def wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.reached.wait(), seconds)


async def consuming(
    broker: Broker, handler: Handler, slots: int, body: Callable[[], Awaitable[None]]
) -> None:
    """Run ``body`` while a consumer feeds ``handler``; stop the consumer afterwards."""
    stop = asyncio.Event()
    consumer = asyncio.create_task(broker.consume(handler, slots, stop))
    try:
        await body()
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer


async def run(args: argparse.Namespace) -> dict[str, Any]:
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    broker: Broker = (
        RedisStreams(args.url, topic, args.connections)
        if args.broker == "redis"
        else JetStream(args.url, args.subject_prefix + topic)
    )
    await broker.open()
    try:
        if args.mode == "publish":
            durations = await at_fixed_rate(
                args.rate, args.connections, args.seconds, lambda _: broker.publish(payload(args.padding))
            )
            return {"publish": asdict(Latency.from_samples(durations, args.seconds))}
        if args.mode == "e2e":
            latencies = Tally()

            async def load() -> None:
                sent = await at_fixed_rate(
                    args.rate,
                    args.connections,
                    args.seconds,
                    lambda _: broker.publish(payload(args.padding, time.monotonic_ns())),
                )
                latencies.expect(len(sent))
                await latencies.wait(10)

            await consuming(
                broker, lambda data, now: latencies.add(now - json.loads(data)["t"]), args.slots, load
            )
            return {
                "sent": latencies.target,
                "received": len(latencies.values),
                "e2e": asdict(Latency.from_samples(latencies.values, args.seconds)),
            }
        await broker.fill([payload(args.padding) for _ in range(args.messages)])
        arrivals = Tally()
        arrivals.expect(args.messages)
        await consuming(broker, lambda _, now: arrivals.add(now), args.slots, lambda: arrivals.wait(120))
        times = arrivals.values
        seconds = (times[-1] - times[0]) / 1e9
        return {"messages": len(times), "seconds": seconds, "per_s": (len(times) - 1) / seconds}
    finally:
        await broker.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("broker", choices=["redis", "jetstream"])
    parser.add_argument("url")
    parser.add_argument("mode", choices=["publish", "e2e", "throughput"])
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--slots", type=int, default=10, help="handlers at once, as Pillion's default")
    parser.add_argument("--padding", type=int, default=300, help="payload padding, about a CloudEvent")
    parser.add_argument("--subject-prefix", default="", help="jetstream: a prefix a stream covers")
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        print(json.dumps(runner.run(run(args))))


if __name__ == "__main__":
    main()

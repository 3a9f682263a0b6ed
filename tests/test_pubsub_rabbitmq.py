"""``pubsub.rabbitmq`` against a real RabbitMQ: names, prefetch, requeue, dead letters, TTL.

The component is driven in-process (its delivery contract is below the runtime's); the sidecar
suites in tests/test_pubsub_{delivery,publish,sidecar,crash}.py run it end to end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel

from components.metadata import MetadataError
from components.pubsub.base import Message, SubscribeOptions
from components.pubsub.rabbitmq import RabbitMQPubSub
from tests.broker_support import Brokers, Inbox, context, wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
async def channel(rabbitmq_url: str) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(rabbitmq_url)
    yield await connection.channel()
    await connection.close()


Broker = Brokers[RabbitMQPubSub]


def brokers(rabbitmq_url: str, tmp_path: Path) -> Broker:
    return Broker(RabbitMQPubSub, {"connectionString": rabbitmq_url}, tmp_path)


@pytest.fixture
async def broker(rabbitmq_url: str, tmp_path: Path) -> AsyncIterator[Broker]:
    b = brokers(rabbitmq_url, tmp_path)
    yield b
    await b.close()


async def ready(channel: AbstractChannel, queue: str) -> int:
    """Messages waiting in ``queue`` (not counting those handed out and unacknowledged)."""
    declared = await channel.declare_queue(queue, passive=True)
    return int(declared.declaration_result.message_count or 0)


async def holds(channel: AbstractChannel, queue: str, count: int) -> bool:
    return await ready(channel, queue) == count


async def test_round_trip_with_daprs_names_and_durable_queues(
    broker: Broker, channel: AbstractChannel
) -> None:
    pubsub = await broker.open("billing")
    inbox = Inbox()
    await pubsub.subscribe("orders", inbox, SubscribeOptions())
    await pubsub.publish("orders", b'{"n": 1}', {"tier": "gold", "cloudevent.id": "id-1"})
    await inbox.wait_for(1)
    (message,) = inbox.messages
    assert (message.topic, message.data, message.id) == ("orders", b'{"n": 1}', "id-1")
    assert message.metadata == {"tier": "gold", "cloudevent.id": "id-1"}
    # Dapr's queue name, and a durable queue that outlives its consumers (passive declares fail
    # on a missing one): messages published while billing is down wait for it.
    queue = f"billing-{broker.prefix}orders"
    assert pubsub.queue_name("orders") == queue
    await pubsub.close()
    publisher = await broker.open("publisher")
    await publisher.publish("orders", b"while away", {})
    await wait_until(lambda: holds(channel, queue, 1))
    back = Inbox()
    await (await broker.open("billing")).subscribe("orders", back, SubscribeOptions())
    await back.wait_for(1)
    assert back.payloads == [b"while away"]


async def test_prefetch_is_the_subscriptions_concurrency(broker: Broker, channel: AbstractChannel) -> None:
    release = asyncio.Event()
    pubsub = await broker.open()
    inbox = Inbox(lambda m: release.wait())
    await pubsub.subscribe("slots", inbox, SubscribeOptions(concurrency=3))
    for n in range(10):
        await pubsub.publish("slots", str(n).encode(), {})
    try:
        await wait_until(lambda: inbox.in_flight == 3)
        await asyncio.sleep(0.3)
        assert inbox.in_flight == 3
        assert await ready(channel, pubsub.queue_name("slots")) == 7
    finally:
        release.set()
    await inbox.wait_for(10)
    assert inbox.most_in_flight == 3


async def test_a_failed_message_is_requeued(broker: Broker) -> None:
    async def fail_once(message: Message) -> None:
        if inbox.calls == 1:
            raise RuntimeError("dead-letter topic unreachable")

    pubsub = await broker.open()
    inbox = Inbox(fail_once)
    await pubsub.subscribe("flaky", inbox, SubscribeOptions())
    await pubsub.publish("flaky", b"again", {})
    await inbox.wait_for(1, within=5)
    assert inbox.payloads == [b"again"] and inbox.calls == 2


async def test_without_requeue_a_failed_message_goes_to_the_dead_letter_queue(
    broker: Broker, channel: AbstractChannel
) -> None:
    async def fail(message: Message) -> None:
        raise RuntimeError("cannot settle")

    pubsub = await broker.open(requeueInFailure="false", enableDeadLetter="true")
    await pubsub.subscribe("poison", Inbox(fail), SubscribeOptions())
    await pubsub.publish("poison", b"bad", {})
    dead = f"dlq-{pubsub.queue_name('poison')}"
    await wait_until(lambda: holds(channel, dead, 1))
    queue = await channel.get_queue(dead)
    got = await queue.get(no_ack=True)
    assert got is not None and got.body == b"bad"


async def test_ttl_expires_waiting_messages_into_the_dead_letter_queue(
    broker: Broker, channel: AbstractChannel
) -> None:
    pubsub = await broker.open(enableDeadLetter="true")
    subscription = await pubsub.subscribe("ttl", Inbox(), SubscribeOptions())
    await subscription.close()  # the queue stays; nobody consumes
    await pubsub.publish("ttl", b"short-lived", {"ttlInSeconds": "1"})
    await pubsub.publish("ttl", b"lasting", {})
    queue = pubsub.queue_name("ttl")
    await wait_until(lambda: holds(channel, f"dlq-{queue}", 1), within=5)
    inbox = Inbox()
    await pubsub.subscribe("ttl", inbox, SubscribeOptions())
    await inbox.wait_for(1)
    await asyncio.sleep(0.2)
    assert inbox.payloads == [b"lasting"]


async def test_dapr_concurrency_mode_single_keeps_order(broker: Broker) -> None:
    pubsub = await broker.open(concurrencyMode="single")
    inbox = Inbox(lambda m: asyncio.sleep(0.001 * (int(m.data) % 3)))
    await pubsub.subscribe("ordered", inbox, SubscribeOptions(concurrency=10))
    for n in range(20):
        await pubsub.publish("ordered", str(n).encode(), {})
    await inbox.wait_for(20)
    assert inbox.payloads == [str(n).encode() for n in range(20)]
    assert inbox.most_in_flight == 1


async def test_a_queue_declared_otherwise_is_a_clear_error(broker: Broker, channel: AbstractChannel) -> None:
    pubsub = await broker.open()
    await channel.declare_queue(pubsub.queue_name("clash"), durable=False, auto_delete=True)
    with pytest.raises(RuntimeError, match="already exists with other settings"):
        await pubsub.subscribe("clash", Inbox(), SubscribeOptions())


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"autoAck": "true"}, "autoAck"),
        ({"requeueInFailure": "false"}, "requeueInFailure"),
        ({"saslExternal": "true"}, "saslExternal"),
        ({"exchangeKind": "x-delayed"}, "exchangeKind"),
        ({"connectionString": "http://nope"}, "connectionString"),
    ],
)
def test_settings_that_would_break_delivery_are_refused(
    rabbitmq_url: str, tmp_path: Path, metadata: dict[str, str], field: str
) -> None:
    with pytest.raises(MetadataError) as caught:
        brokers(rabbitmq_url, tmp_path).build(**metadata)
    assert caught.value.field == field


def test_connection_from_parts(rabbitmq_url: str, tmp_path: Path) -> None:
    raw = {"hostname": "mq.internal:5673", "username": "u@x", "password": "p/w", "heartBeat": "30s"}
    pubsub = RabbitMQPubSub(RabbitMQPubSub.schema.parse(raw), context(tmp_path, "app"))
    assert pubsub.url == "amqp://u%40x:p%2Fw@mq.internal:5673?heartbeat=30"
    assert pubsub.where() == "mq.internal:5673/"


async def test_init_fails_with_one_line_when_rabbitmq_is_unreachable(tmp_path: Path) -> None:
    from tests.support import free_port

    port = free_port()
    raw = {"connectionString": f"amqp://guest:guest@127.0.0.1:{port}/"}
    pubsub = RabbitMQPubSub(RabbitMQPubSub.schema.parse(raw), context(tmp_path))
    with pytest.raises(RuntimeError, match=f"cannot reach RabbitMQ at 127.0.0.1:{port}/"):
        await pubsub.init()

"""``pubsub.jetstream`` against a real NATS server: streams, durable consumers, leases, metadata.

The component is driven in-process (its delivery contract is below the runtime's); the sidecar
suites in tests/test_pubsub_{delivery,publish,sidecar,crash}.py run it end to end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.js import JetStreamContext

from components.metadata import MetadataError
from components.pubsub.base import Message, SubscribeOptions
from components.pubsub.jetstream import JetStreamPubSub
from tests.broker_support import Brokers, Inbox, context, wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    client = await nats.connect(nats_url)
    yield client.jetstream()
    await client.close()


Broker = Brokers[JetStreamPubSub]


def brokers(nats_url: str, tmp_path: Path) -> Broker:
    return Broker(JetStreamPubSub, {"natsURL": nats_url, "ackWait": "1s"}, tmp_path)


@pytest.fixture
async def broker(nats_url: str, tmp_path: Path) -> AsyncIterator[Broker]:
    b = brokers(nats_url, tmp_path)
    yield b
    await b.close()


async def all_acknowledged(js: JetStreamContext, pubsub: JetStreamPubSub, topic: str) -> bool:
    stream = await js.find_stream_name_by_subject(pubsub.subject(topic))
    for info in await js.consumers_info(stream):
        if info.config.filter_subject == pubsub.subject(topic):
            return not (info.num_ack_pending or info.num_pending)
    raise AssertionError("no consumer")


async def test_round_trip_creates_a_stream_per_topic_and_carries_metadata(
    broker: Broker, js: JetStreamContext
) -> None:
    pubsub = await broker.open()
    inbox = Inbox()
    await pubsub.subscribe("orders", inbox, SubscribeOptions())
    await pubsub.publish("orders", b'{"n": 1}', {"contentType": "application/json", "tier": "gold"})
    await inbox.wait_for(1)
    (message,) = inbox.messages
    assert (message.topic, message.data) == ("orders", b'{"n": 1}')
    assert message.metadata == {"contentType": "application/json", "tier": "gold"}
    assert message.id.isdigit()
    stream = await js.stream_info(await js.find_stream_name_by_subject(broker.prefix + "orders"))
    assert stream.config.subjects == [broker.prefix + "orders"]
    await wait_until(lambda: all_acknowledged(js, pubsub, "orders"))


async def test_metadata_that_cannot_be_a_nats_header_stays_behind(broker: Broker) -> None:
    pubsub = await broker.open()
    inbox = Inbox()
    await pubsub.subscribe("headers", inbox, SubscribeOptions())
    await pubsub.publish("headers", b"x", {"bad key": "1", "folded": "a\r\nInjected: yes", "fine": "2"})
    await inbox.wait_for(1)
    assert inbox.messages[0].metadata == {"fine": "2"}


async def test_groups_fan_out_and_a_group_survives_its_sidecars(broker: Broker) -> None:
    billing, shipping = await broker.open("billing"), await broker.open("shipping")
    inboxes = [Inbox(), Inbox()]
    subscription = await billing.subscribe("fan", inboxes[0], SubscribeOptions())
    await shipping.subscribe("fan", inboxes[1], SubscribeOptions())
    await billing.publish("fan", b"one", {})
    for inbox in inboxes:
        await inbox.wait_for(1)
    # Billing's durable consumer keeps its place while no billing sidecar runs.
    await subscription.close()
    await shipping.publish("fan", b"two", {})
    later = Inbox()
    await (await broker.open("billing")).subscribe("fan", later, SubscribeOptions())
    await later.wait_for(1)
    assert later.payloads == [b"two"]


async def test_a_slow_handler_keeps_its_message_past_ack_wait(broker: Broker) -> None:
    seen: list[bytes] = []

    async def slow(message: Message) -> None:
        seen.append(message.data)
        await asyncio.sleep(2.5)  # ackWait is 1s: renewed twice meanwhile

    for _ in range(2):
        pubsub = await broker.open()
        await pubsub.subscribe("slow", Inbox(slow), SubscribeOptions(concurrency=2))
    await broker.opened[0].publish("slow", b"patience", {})
    await wait_until(lambda: len(seen) == 1)
    await asyncio.sleep(3)
    assert seen == [b"patience"]


async def test_a_failed_message_comes_back_after_ack_wait(broker: Broker) -> None:
    tries: list[float] = []

    async def fail_once(message: Message) -> None:
        tries.append(asyncio.get_running_loop().time())
        if len(tries) == 1:
            raise RuntimeError("dead-letter topic unreachable")

    pubsub = await broker.open()
    inbox = Inbox(fail_once)
    await pubsub.subscribe("flaky", inbox, SubscribeOptions())
    await pubsub.publish("flaky", b"again", {})
    await inbox.wait_for(1, within=5)
    assert inbox.payloads == [b"again"] and len(tries) == 2
    assert tries[1] - tries[0] >= 0.9  # not at once: after ackWait


async def test_pulls_no_more_than_free_handler_slots(broker: Broker, js: JetStreamContext) -> None:
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
        stream = await js.find_stream_name_by_subject(pubsub.subject("slots"))
        (info,) = [
            i for i in await js.consumers_info(stream) if i.config.filter_subject == pubsub.subject("slots")
        ]
        assert info.num_ack_pending == 3
    finally:
        release.set()
    await inbox.wait_for(10)
    assert inbox.most_in_flight == 3


async def test_dapr_concurrency_single_keeps_order(broker: Broker) -> None:
    pubsub = await broker.open(concurrency="single")
    inbox = Inbox(lambda m: asyncio.sleep(0.001 * (int(m.data) % 3)))
    # The runtime's default (10) is not "explicit": the component's `single` wins.
    await pubsub.subscribe("ordered", inbox, SubscribeOptions(concurrency=10))
    for n in range(20):
        await pubsub.publish("ordered", str(n).encode(), {})
    await inbox.wait_for(20)
    assert inbox.payloads == [str(n).encode() for n in range(20)]
    assert inbox.most_in_flight == 1


async def test_the_same_cloudevent_id_is_stored_once(broker: Broker) -> None:
    pubsub = await broker.open()
    inbox = Inbox()
    await pubsub.subscribe("dedup", inbox, SubscribeOptions())
    for _ in range(2):
        await pubsub.publish("dedup", b"once", {"cloudevent.id": "same-id"})
    await pubsub.publish("dedup", b"fence", {})
    await inbox.wait_for(2)
    assert inbox.payloads == [b"once", b"fence"]


async def test_deliver_policy_new_skips_what_came_before(broker: Broker) -> None:
    publisher = await broker.open("publisher")
    await publisher.subscribe("history", Inbox(), SubscribeOptions())  # makes the stream
    await publisher.publish("history", b"old", {})
    late = await broker.open("late", deliverPolicy="new")
    inbox = Inbox()
    await late.subscribe("history", inbox, SubscribeOptions())
    await publisher.publish("history", b"new", {})
    await inbox.wait_for(1)
    await asyncio.sleep(0.2)
    assert inbox.payloads == [b"new"]


async def test_stream_name_must_exist_and_hold_the_topic(broker: Broker, js: JetStreamContext) -> None:
    name = broker.prefix.replace(".", "_") + "own"
    await js.add_stream(name=name, subjects=[broker.prefix + "mine.*"])
    pubsub = await broker.open(streamName=name)
    inbox = Inbox()
    await pubsub.subscribe("mine.a", inbox, SubscribeOptions())
    await pubsub.publish("mine.a", b"kept in the user's stream", {})
    await inbox.wait_for(1)
    with pytest.raises(RuntimeError, match="does not hold subject"):
        await pubsub.publish("elsewhere", b"x", {})
    missing = await broker.open(streamName=name + "-missing")
    with pytest.raises(RuntimeError, match="does not exist"):
        await missing.subscribe("mine.b", Inbox(), SubscribeOptions())


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"ackPolicy": "none"}, "ackPolicy"),
        ({"ackPolicy": "all"}, "ackPolicy"),
        ({"jwt": "eyJ...", "seedKey": "SU..."}, "jwt"),
        ({"maxDeliver": "0"}, "maxDeliver"),
        ({"backOff": "1s, 5s"}, "backOff"),
        ({"deliverPolicy": "sequence"}, "startSequence"),
        ({"concurrency": "lots"}, "concurrency"),
    ],
)
def test_settings_that_would_break_delivery_are_refused(
    nats_url: str, tmp_path: Path, metadata: dict[str, str], field: str
) -> None:
    with pytest.raises(MetadataError) as caught:
        brokers(nats_url, tmp_path).build(**metadata)
    assert caught.value.field == field


def test_group_and_dapr_names(nats_url: str, tmp_path: Path) -> None:
    broker = brokers(nats_url, tmp_path)
    assert broker.build("orders").group == "orders"
    assert broker.build("orders", consumerID="{appID}-v2").group == "orders-v2"
    assert broker.build("orders", queueGroupName="q", consumerID="c").group == "q"
    assert broker.build("orders", durableName="d", queueGroupName="q").group == "d"
    assert broker.build(concurrency="single").concurrency == 1
    assert broker.build(concurrency="parallel").concurrency is None


async def test_init_fails_with_one_line_when_nats_is_unreachable(tmp_path: Path) -> None:
    from tests.support import free_port

    url = f"nats://127.0.0.1:{free_port()}"
    pubsub = JetStreamPubSub(JetStreamPubSub.schema.parse({"natsURL": url}), context(tmp_path))
    with pytest.raises(RuntimeError, match=f"cannot reach NATS at {url}"):
        await pubsub.init()

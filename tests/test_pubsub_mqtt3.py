"""``pubsub.mqtt3`` against a real Mosquitto: sessions, shared subscriptions, manual acks, limits.

The component is driven in-process (its delivery contract is below the runtime's); the sidecar
suites in tests/test_pubsub_{delivery,publish,sidecar,crash}.py run it end to end. The last tests
here show the documented limits of MQTT 3.1.1 (docs/pubsub-brokers.md) as they are.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from components.metadata import MetadataError
from components.pubsub.base import Message, SubscribeOptions
from components.pubsub.mqtt3 import MQTTPubSub, session_client_ids
from tests.broker_support import Brokers, Inbox, context

pytestmark = pytest.mark.anyio


Broker = Brokers[MQTTPubSub]


def brokers(mqtt_url: str, tmp_path: Path) -> Broker:
    return Broker(MQTTPubSub, {"url": mqtt_url}, tmp_path, separator="/", place="a")


@pytest.fixture
async def broker(mqtt_url: str, tmp_path: Path) -> AsyncIterator[Broker]:
    b = brokers(mqtt_url, tmp_path)
    yield b
    await b.close()


async def test_round_trip_keeps_the_payload_and_strips_the_prefix(broker: Broker) -> None:
    pubsub = await broker.open()
    inbox = Inbox()
    await pubsub.subscribe("sensors/+", inbox, SubscribeOptions())
    await pubsub.publish("sensors/kitchen", b"\x00 21.5 \xff", {"ignored": "no headers in MQTT 3.1.1"})
    await inbox.wait_for(1)
    (message,) = inbox.messages
    assert (message.topic, message.data, message.metadata) == ("sensors/kitchen", b"\x00 21.5 \xff", {})


async def test_messages_published_while_the_sidecar_is_down_wait_for_it(broker: Broker) -> None:
    subscriber = await broker.open(place="sub")
    subscription = await subscriber.subscribe("queued", Inbox(), SubscribeOptions())
    await subscription.close()  # the session stays with the broker
    publisher = await broker.open("publisher", place="pub")
    for n in range(5):
        await publisher.publish("queued", str(n).encode(), {})
    await subscriber.close()
    restarted = await broker.open(place="sub")  # the same place: the same slot and client id
    inbox = Inbox()
    await restarted.subscribe("queued", inbox, SubscribeOptions(concurrency=1))
    await inbox.wait_for(5)
    assert inbox.payloads == [str(n).encode() for n in range(5)]


async def test_a_failed_message_is_handed_over_again(broker: Broker) -> None:
    async def fail_once(message: Message) -> None:
        if inbox.calls == 1:
            raise RuntimeError("dead-letter topic unreachable")

    pubsub = await broker.open()
    inbox = Inbox(fail_once)
    await pubsub.subscribe("flaky", inbox, SubscribeOptions())
    await pubsub.publish("flaky", b"again", {})
    await inbox.wait_for(1, within=5)
    assert inbox.payloads == [b"again"] and inbox.calls == 2


async def test_an_unacknowledged_message_comes_back_with_the_session(broker: Broker) -> None:
    """A handler cut off by shutdown leaves its message unacknowledged: the broker sends it again
    when the same session reconnects (a SIGKILL does the same; see tests/test_pubsub_crash.py)."""
    stuck = asyncio.Event()

    async def hang(message: Message) -> None:
        stuck.set()
        await asyncio.Event().wait()

    first = await broker.open(place="worker")
    subscription = await first.subscribe("interrupted", Inbox(hang), SubscribeOptions())
    await first.publish("interrupted", b"unfinished", {})
    await asyncio.wait_for(stuck.wait(), 5)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(subscription.close(), 0.2)
    await first.close()
    again = await broker.open(place="worker")
    inbox = Inbox()
    await again.subscribe("interrupted", inbox, SubscribeOptions())
    await inbox.wait_for(1)
    assert inbox.payloads == [b"unfinished"]


async def test_sidecars_sharing_a_data_folder_take_different_slots(broker: Broker) -> None:
    first, second = await broker.open(place="shared"), await broker.open(place="shared")
    assert first.instance != second.instance
    await first.subscribe("t", Inbox(), SubscribeOptions())
    await second.subscribe("t", Inbox(), SubscribeOptions())
    ids = session_client_ids(broker.tmp_path / "shared" / "data")
    assert len(ids) == 2 and all(i.startswith("app-") for i in ids)
    await first.close()
    third = await broker.open(place="shared")
    assert third.instance == first.instance  # the freed slot is taken again


async def test_limit_a_stopped_sidecar_keeps_its_share_of_new_messages(broker: Broker) -> None:
    """Documented limit: Mosquitto deals shared-subscription messages to every member's session,
    running or not. What it dealt to a stopped sidecar waits until that sidecar comes back."""
    running, stopped = await broker.open(place="running"), await broker.open(place="stopped")
    live = Inbox()
    await running.subscribe("dealt", live, SubscribeOptions())
    await (await stopped.subscribe("dealt", Inbox(), SubscribeOptions())).close()
    publisher = await broker.open("publisher", place="pub")
    for n in range(10):
        await publisher.publish("dealt", str(n).encode(), {})
    await live.wait_for(1)
    await asyncio.sleep(0.5)
    assert 0 < len(live.messages) < 10
    await stopped.close()
    back = Inbox()
    await (await broker.open(place="stopped")).subscribe("dealt", back, SubscribeOptions())
    await back.wait_for(10 - len(live.messages))
    assert sorted(live.payloads + back.payloads) == sorted(str(n).encode() for n in range(10))


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"qos": "3"}, "qos"),
        ({"url": "http://broker"}, "url"),
        ({"clientCert": "-----BEGIN CERTIFICATE-----"}, "clientCert"),
        ({"concurrency": "0"}, "concurrency"),
    ],
)
def test_bad_settings_are_refused(
    mqtt_url: str, tmp_path: Path, metadata: dict[str, str], field: str
) -> None:
    with pytest.raises(MetadataError) as caught:
        brokers(mqtt_url, tmp_path).build(**metadata)
    assert caught.value.field == field


def test_url_parts_and_groups(mqtt_url: str, tmp_path: Path) -> None:
    broker = brokers(mqtt_url, tmp_path)
    pubsub = broker.build(url="ssl://us%40r:p%2Fw@mqtt.internal", consumerID="{appID}/v2")
    assert (pubsub.host, pubsub.port, pubsub.tls) == ("mqtt.internal", 8883, True)
    assert (pubsub.username, pubsub.password) == ("us@r", "p/w")
    assert (pubsub.group, pubsub.share_group) == ("app/v2", "app_v2")


async def test_init_fails_with_one_line_when_the_broker_is_unreachable(tmp_path: Path) -> None:
    from tests.support import free_port

    port = free_port()
    pubsub = MQTTPubSub(MQTTPubSub.schema.parse({"url": f"tcp://127.0.0.1:{port}"}), context(tmp_path))
    with pytest.raises(RuntimeError, match=f"cannot reach the MQTT broker at 127.0.0.1:{port}"):
        await pubsub.init()

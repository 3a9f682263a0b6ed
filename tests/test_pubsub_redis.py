"""``pubsub.redis`` against a real Redis: framing, consumer groups, redelivery, trimming.

The component is driven in-process here (its delivery contract is below the runtime's); the
end-to-end tests through sidecar processes are at the bottom of this file.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from components.base import ComponentContext
from components.metadata import MetadataError
from components.pubsub.base import Message, SubscribeOptions
from components.pubsub.redis import RedisPubSub
from tests.broker_support import Inbox, wait_until
from tests.pubsub_support import Delivery, Reply, SubscriberApp, running, subscription
from tests.pubsub_support import redis as redis_broker
from tests.state_support import component, redis_metadata
from tests.support import run_sidecar_to_exit, start_sidecar

pytestmark = pytest.mark.anyio

# Short enough that redelivery tests take a fraction of a second.
FAST = {"processingTimeout": "300ms", "redeliverInterval": "100ms", "readTimeout": "200ms"}


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def topic() -> str:
    return f"topic-{uuid.uuid4().hex[:12]}"


class Broker:
    """Builds RedisPubSub instances (one per simulated sidecar) and closes them after the test."""

    def __init__(self, redis_url: str, tmp_path: Path) -> None:
        self.redis_url = redis_url
        self.tmp_path = tmp_path
        self.opened: list[RedisPubSub] = []

    async def open(self, app_id: str = "app", **metadata: str) -> RedisPubSub:
        raw = {**redis_metadata(self.redis_url), **FAST, **metadata}
        context = ComponentContext("pubsub", app_id, self.tmp_path, self.tmp_path)
        pubsub = RedisPubSub(RedisPubSub.schema.parse(raw), context)
        await pubsub.init()
        self.opened.append(pubsub)
        return pubsub

    async def close_all(self) -> None:
        for pubsub in self.opened:
            await pubsub.close()


@pytest.fixture
async def broker(redis_url: str, tmp_path: Path) -> AsyncIterator[Broker]:
    b = Broker(redis_url, tmp_path)
    yield b
    await b.close_all()


async def pending_count(redis: Redis, topic: str, group: str) -> int:
    summary: dict[str, Any] = await redis.xpending(topic, group)
    return int(summary["pending"])


def stream_fields(entries: Any) -> list[dict[bytes, bytes]]:
    """The field maps of an XRANGE/XREVRANGE answer, oldest first as given."""
    return [fields for _, fields in entries]


async def nothing_pending(redis: Redis, topic: str) -> bool:
    return await pending_count(redis, topic, "app") == 0


# --- framing and round trip ----------------------------------------------------------------


async def test_round_trip_and_ack(broker: Broker, redis: Redis, topic: str) -> None:
    pubsub = await broker.open()
    inbox = Inbox()
    await pubsub.subscribe(topic, inbox, SubscribeOptions())
    await pubsub.publish(topic, b'{"hello": "world"}', {"contentType": "application/json"})
    await inbox.wait_for(1)
    message = inbox.messages[0]
    assert message.topic == topic
    assert message.data == b'{"hello": "world"}'
    assert message.metadata == {"contentType": "application/json"}
    assert message.id and "-" in message.id
    await wait_until(lambda: nothing_pending(redis, topic))


async def test_framing_matches_dapr(broker: Broker, redis: Redis, topic: str) -> None:
    pubsub = await broker.open()
    await pubsub.publish(topic, b"\x00binary\xff", {})
    await pubsub.publish(topic, b"with-meta", {"rawPayload": "true", "ttlInSeconds": "10"})
    entries = stream_fields(await redis.xrange(topic))
    assert entries == [
        {b"data": b"\x00binary\xff"},
        {b"data": b"with-meta", b"metadata": b'{"rawPayload": "true", "ttlInSeconds": "10"}'},
    ]
    assert json.loads(entries[1][b"metadata"]) == {"rawPayload": "true", "ttlInSeconds": "10"}


async def test_reads_entries_written_by_dapr_and_tolerates_bad_metadata(
    broker: Broker, redis: Redis, topic: str
) -> None:
    # What a Dapr sidecar writes (data only), and an entry with metadata that is not JSON.
    await redis.xadd(topic, {"data": b"from-dapr"})
    await redis.xadd(topic, {"data": b"odd-meta", "metadata": b"not json"})
    pubsub = await broker.open()
    inbox = Inbox()
    await pubsub.subscribe(topic, inbox, SubscribeOptions(concurrency=1))
    await inbox.wait_for(2)
    assert [(m.data, m.metadata) for m in inbox.messages] == [(b"from-dapr", {}), (b"odd-meta", {})]


async def test_new_group_replays_the_stream_from_the_start(broker: Broker, topic: str) -> None:
    publisher = await broker.open("publisher")
    for n in range(3):
        await publisher.publish(topic, f"old-{n}".encode(), {})
    late = await broker.open("late-app")
    inbox = Inbox()
    await late.subscribe(topic, inbox, SubscribeOptions(concurrency=1))
    await inbox.wait_for(3)
    assert inbox.payloads == [b"old-0", b"old-1", b"old-2"]


# --- consumer groups -------------------------------------------------------------------------


async def test_same_app_id_competes_for_messages(broker: Broker, topic: str) -> None:
    inboxes = []
    for _ in range(2):
        pubsub = await broker.open("orders")
        inbox = Inbox(lambda m: asyncio.sleep(0.01))
        await pubsub.subscribe(topic, inbox, SubscribeOptions(concurrency=2))
        inboxes.append(inbox)
    assert broker.opened[0].consumer_prefix != broker.opened[1].consumer_prefix
    publisher = broker.opened[0]
    sent = [f"m-{n}".encode() for n in range(40)]
    for payload in sent:
        await publisher.publish(topic, payload, {})
    await wait_until(lambda: sum(len(i.messages) for i in inboxes) >= 40)
    await asyncio.sleep(0.3)  # room for any duplicate to show up
    received = Counter(p for inbox in inboxes for p in inbox.payloads)
    assert received == Counter(sent)  # every message exactly once across the two sidecars
    assert all(inbox.messages for inbox in inboxes), "both consumers should have taken a share"


async def test_different_app_ids_each_get_every_message(broker: Broker, topic: str) -> None:
    inboxes = {}
    for app in ("billing", "shipping"):
        pubsub = await broker.open(app)
        inboxes[app] = Inbox()
        await pubsub.subscribe(topic, inboxes[app], SubscribeOptions())
    sent = [f"m-{n}".encode() for n in range(10)]
    for payload in sent:
        await broker.opened[0].publish(topic, payload, {})
    for inbox in inboxes.values():
        await inbox.wait_for(10)
    assert all(sorted(inbox.payloads) == sorted(sent) for inbox in inboxes.values())


async def test_consumer_id_names_the_group(broker: Broker, redis: Redis, topic: str) -> None:
    # Reads block for 10s here, so closing within seconds shows the read was cut short.
    pubsub = await broker.open(
        "app", consumerID="{appID} workers", readTimeout="10s", redeliverInterval="30s"
    )
    inbox = Inbox()
    subscription = await pubsub.subscribe(topic, inbox, SubscribeOptions())
    await pubsub.publish(topic, b"hello", {})
    await inbox.wait_for(1)
    groups = await redis.xinfo_groups(topic)
    assert [g["name"] for g in groups] == [b"app workers"]
    started = time.monotonic()
    await subscription.close()
    assert time.monotonic() - started < 5  # CLIENT UNBLOCK ended the blocked read


# --- redelivery ----------------------------------------------------------------------------


async def test_failed_message_stays_pending_and_is_redelivered(
    broker: Broker, redis: Redis, topic: str
) -> None:
    attempts: Counter[bytes] = Counter()

    async def fail_first_time(message: Message) -> None:
        attempts[message.data] += 1
        if attempts[message.data] == 1:
            raise RuntimeError("app not ready")

    pubsub = await broker.open()
    inbox = Inbox(fail_first_time)
    await pubsub.subscribe(topic, inbox, SubscribeOptions())
    await pubsub.publish(topic, b"retry-me", {})
    await wait_until(lambda: attempts[b"retry-me"] == 1)
    # Not acknowledged: still in the group's pending list.
    assert await pending_count(redis, topic, "app") == 1
    await inbox.wait_for(1, within=5)
    assert attempts[b"retry-me"] == 2
    await wait_until(lambda: nothing_pending(redis, topic))


async def test_message_of_a_dead_consumer_is_claimed_by_a_live_one(
    broker: Broker, redis: Redis, topic: str
) -> None:
    await redis.xgroup_create(topic, "app", id="0", mkstream=True)
    await redis.xadd(topic, {"data": b"orphan"})
    # A consumer that read the message and died without acknowledging it.
    await redis.xreadgroup("app", "crashed-sidecar", {topic: ">"}, count=1)
    pubsub = await broker.open()
    inbox = Inbox()
    await pubsub.subscribe(topic, inbox, SubscribeOptions())
    await inbox.wait_for(1, within=5)
    assert inbox.payloads == [b"orphan"]
    await wait_until(lambda: nothing_pending(redis, topic))


async def test_slow_handler_is_never_given_a_duplicate(broker: Broker, redis: Redis, topic: str) -> None:
    """A handler five times slower than processingTimeout: neither its own sidecar nor a
    competing one may take the message while it runs (components-contrib#4599, dapr#3481)."""
    seen: Counter[bytes] = Counter()

    async def slow(message: Message) -> None:
        seen[message.data] += 1
        await asyncio.sleep(1.5)

    inboxes = []
    for _ in range(2):
        pubsub = await broker.open("app", processingTimeout="300ms", redeliverInterval="50ms")
        inbox = Inbox(slow)
        await pubsub.subscribe(topic, inbox, SubscribeOptions(concurrency=4))
        inboxes.append(inbox)
    for n in range(3):
        await broker.opened[0].publish(topic, f"slow-{n}".encode(), {})
    await wait_until(lambda: sum(len(i.messages) for i in inboxes) == 3, within=10)
    await asyncio.sleep(0.5)
    assert seen == Counter({b"slow-0": 1, b"slow-1": 1, b"slow-2": 1})
    await wait_until(lambda: nothing_pending(redis, topic))


async def test_reads_no_more_than_free_handler_slots(broker: Broker, redis: Redis, topic: str) -> None:
    """Nothing waits in a local buffer: the entries Redis counts as delivered to this consumer are
    the ones being handled."""
    release = asyncio.Event()
    pubsub = await broker.open()

    async def blocked(message: Message) -> None:
        await release.wait()

    inbox = Inbox(blocked)
    await pubsub.subscribe(topic, inbox, SubscribeOptions(concurrency=3))
    for n in range(10):
        await pubsub.publish(topic, f"m-{n}".encode(), {})
    try:
        await wait_until(lambda: inbox.in_flight >= 3)
        await asyncio.sleep(0.3)
        assert inbox.in_flight == 3
        assert await pending_count(redis, topic, "app") == 3
    finally:
        release.set()
    await inbox.wait_for(10)
    assert inbox.most_in_flight == 3


async def test_concurrency_one_delivers_in_order(broker: Broker, topic: str) -> None:
    pubsub = await broker.open()
    inbox = Inbox(lambda m: asyncio.sleep(0.002 * (len(m.data) % 3)))
    await pubsub.subscribe(topic, inbox, SubscribeOptions(concurrency=1))
    sent = [f"{n}".encode() * (n % 4 + 1) for n in range(30)]
    for payload in sent:
        await pubsub.publish(topic, payload, {})
    await inbox.wait_for(30)
    assert inbox.payloads == sent
    assert inbox.most_in_flight == 1


# --- shutdown and recovery -----------------------------------------------------------------


async def test_close_waits_for_handlers_and_acks_them(broker: Broker, redis: Redis, topic: str) -> None:
    pubsub = await broker.open()
    inbox = Inbox(lambda m: asyncio.sleep(0.4))
    subscription = await pubsub.subscribe(topic, inbox, SubscribeOptions())
    await pubsub.publish(topic, b"finish-me", {})
    await wait_until(lambda: inbox.in_flight == 1)
    await subscription.close()
    assert inbox.payloads == [b"finish-me"]
    assert await pending_count(redis, topic, "app") == 0
    # The consumer held nothing, so it left the group.
    assert await redis.xinfo_consumers(topic, "app") == []


async def test_cancelled_handler_is_not_acked(broker: Broker, redis: Redis, topic: str) -> None:
    pubsub = await broker.open()
    inbox = Inbox(lambda m: asyncio.sleep(30))
    subscription = await pubsub.subscribe(topic, inbox, SubscribeOptions())
    await pubsub.publish(topic, b"interrupted", {})
    await wait_until(lambda: inbox.in_flight == 1)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(subscription.close(), 0.2)
    assert await pending_count(redis, topic, "app") == 1
    # The next sidecar of the app gets it once processingTimeout has passed.
    successor = await broker.open()
    inbox2 = Inbox()
    await successor.subscribe(topic, inbox2, SubscribeOptions())
    await inbox2.wait_for(1, within=5)
    assert inbox2.payloads == [b"interrupted"]


async def test_messages_interrupted_by_shutdown_go_to_the_next_sidecar_at_once(
    broker: Broker, redis: Redis, topic: str
) -> None:
    """The runtime's handler raises CancelledError when the sidecar stops mid-delivery; the message
    stays unacknowledged and is claimable at once, not a processingTimeout (here 30s) later."""
    stopping = asyncio.Event()

    async def interrupted_by_stop(message: Message) -> None:
        await stopping.wait()
        raise asyncio.CancelledError("the sidecar is stopping")

    slow = {"processingTimeout": "30s", "redeliverInterval": "100ms"}
    pubsub = await broker.open(**slow)
    inbox = Inbox(interrupted_by_stop)
    subscription = await pubsub.subscribe(topic, inbox, SubscribeOptions())
    await pubsub.publish(topic, b"half-done", {})
    await wait_until(lambda: inbox.in_flight == 1)
    closing = asyncio.create_task(subscription.close())
    stopping.set()
    await closing
    assert inbox.messages == []
    assert await pending_count(redis, topic, "app") == 1
    successor = await broker.open(**slow)
    inbox2 = Inbox()
    await successor.subscribe(topic, inbox2, SubscribeOptions())
    await inbox2.wait_for(1, within=5)
    assert inbox2.payloads == [b"half-done"]


async def test_group_is_created_again_when_the_stream_is_deleted(
    broker: Broker, redis: Redis, topic: str
) -> None:
    pubsub = await broker.open()
    inbox = Inbox()
    await pubsub.subscribe(topic, inbox, SubscribeOptions())
    await pubsub.publish(topic, b"before", {})
    await inbox.wait_for(1)
    await redis.delete(topic)  # drops the consumer group with it, as a server without data would
    await pubsub.publish(topic, b"after", {})
    await inbox.wait_for(2)
    assert inbox.payloads == [b"before", b"after"]


# --- trimming and metadata -----------------------------------------------------------------


async def test_max_len_approx_trims_the_stream(broker: Broker, redis: Redis, topic: str) -> None:
    pubsub = await broker.open(maxLenApprox="100")
    for n in range(1000):
        await pubsub.publish(topic, str(n).encode(), {})
    length = await redis.xlen(topic)
    assert 100 <= length < 1000
    assert stream_fields(await redis.xrevrange(topic, count=1)) == [{b"data": b"999"}]


async def test_stream_ttl_trims_old_entries(broker: Broker, redis: Redis, topic: str) -> None:
    pubsub = await broker.open(streamTTL="300ms")
    for n in range(300):
        await pubsub.publish(topic, str(n).encode(), {})
    await asyncio.sleep(0.4)
    await pubsub.publish(topic, b"fresh", {})
    length = await redis.xlen(topic)
    assert length < 301
    assert stream_fields(await redis.xrevrange(topic, count=1)) == [{b"data": b"fresh"}]


def test_durations_accept_go_strings_and_bare_milliseconds(redis_url: str, tmp_path: Path) -> None:
    context = ComponentContext("pubsub", "app", tmp_path, tmp_path)
    base = redis_metadata(redis_url)
    parsed = RedisPubSub.schema.parse(
        {**base, "processingTimeout": "1500", "redeliverInterval": "30s", "readTimeout": "1m"}
    )
    pubsub = RedisPubSub(parsed, context)
    assert pubsub.processing_timeout == 1.5
    assert pubsub.redeliver_interval == 30.0  # Dapr silently keeps 15s here (docs#5326)
    assert pubsub.block_seconds == 60.0
    defaults = RedisPubSub(RedisPubSub.schema.parse(base), context)
    assert (defaults.processing_timeout, defaults.redeliver_interval) == (60.0, 15.0)
    assert defaults.queue_depth == 100
    assert defaults.group == "app"
    with pytest.raises(MetadataError, match="redeliverInterval"):
        RedisPubSub.schema.parse({**base, "redeliverInterval": "soon"})
    with pytest.raises(MetadataError, match="redisPort"):
        RedisPubSub(RedisPubSub.schema.parse({**base, "redisPort": "1"}), context)


async def test_init_fails_with_the_address_when_redis_is_unreachable(tmp_path: Path) -> None:
    from tests.support import free_port

    port = free_port()
    raw = {"redisHost": f"127.0.0.1:{port}", "redisMaxRetries": "-1", "dialTimeout": "500ms"}
    pubsub = RedisPubSub(RedisPubSub.schema.parse(raw), ComponentContext("pubsub", "app", tmp_path, tmp_path))
    with pytest.raises(RuntimeError, match=f"cannot reach Redis at 127.0.0.1:{port}"):
        await pubsub.init()


def test_sidecar_stops_with_one_line_when_redis_is_unreachable(tmp_path: Path) -> None:
    from tests.support import free_port, write_resources

    resources = write_resources(
        tmp_path / "resources",
        {
            "pubsub.yaml": component(
                "pubsub", "pubsub.redis", {"redisHost": f"127.0.0.1:{free_port()}", "redisMaxRetries": "-1"}
            )
        },
    )
    result = run_sidecar_to_exit(
        tmp_path, ["--app-id", "app", "--resources-path", str(resources), "--dapr-http-port", "0"]
    )
    assert result.returncode == 1
    assert (
        "component 'pubsub': init failed: cannot reach Redis at 127.0.0.1:" in result.stderr + result.stdout
    )


# --- end to end, through sidecar processes -------------------------------------------------
# Fan-out across app ids and competing sidecars of one app also run on Redis through the generic
# suites (tests/pubsub_support.py BROKERS).

E2E_FAST = {"processingTimeout": "1s", "redeliverInterval": "200ms"}


def test_sidecar_publishes_with_daprs_framing(redis_url: str, tmp_path: Path) -> None:
    topic = f"framing-{uuid.uuid4().hex[:8]}"
    resources = {"pubsub.yaml": redis_broker("pubsub", tmp_path, redis_url, {})}
    sidecar = start_sidecar(tmp_path, app_id="publisher", resources=resources)
    try:
        with sidecar.client() as client:
            assert client.post(f"/v1.0/publish/pubsub/{topic}", json={"n": 1}).status_code == 204
            response = client.post(
                f"/v1.0/publish/pubsub/{topic}", json={"n": 2}, params={"metadata.priority": "high"}
            )
            assert response.status_code == 204
    finally:
        sidecar.stop()
    entries = stream_fields(SyncRedis.from_url(redis_url).xrange(topic))
    assert [sorted(fields) for fields in entries] == [[b"data"], [b"data", b"metadata"]]
    first, second = (json.loads(fields[b"data"]) for fields in entries)
    assert (first["data"], first["topic"], first["pubsubname"]) == ({"n": 1}, topic, "pubsub")
    assert first["specversion"] == "1.0" and first["source"] == "publisher"
    assert second["data"] == {"n": 2}
    assert json.loads(entries[1][b"metadata"]) == {"priority": "high"}


def test_sigkill_of_one_sidecar_loses_nothing(redis_url: str, tmp_path: Path) -> None:
    """Two sidecars of one app share a topic while the app is slow; one is SIGKILLed mid-way and
    restarted. Every message arrives at least once; only those the killed sidecar had in flight
    (at most its concurrency, as it never reads ahead) may arrive twice."""
    topic = f"crash-{uuid.uuid4().hex[:8]}"
    total, concurrency = 200, 10

    published = threading.Event()

    def slow(delivery: Delivery) -> Reply:
        published.wait(30)  # hold the first deliveries until everything is published
        time.sleep(0.1)
        return 200, None

    app = SubscriberApp([subscription(topic, "/work")], slow).start()
    resources = {"pubsub.yaml": redis_broker("pubsub", tmp_path, redis_url, E2E_FAST)}
    try:
        with running(tmp_path / "survivor", app, resources, app_id="worker"):
            with running(tmp_path / "victim", app, resources, app_id="worker") as victim:
                with victim.client() as client:
                    for n in range(total):
                        response = client.post(f"/v1.0/publish/pubsub/{topic}", json={"n": n})
                        assert response.status_code == 204
                published.set()
                app.wait_for(total // 4, "/work")
                victim.stop(signal.SIGKILL)
            delivered_before_kill = len(app.received("/work"))
            assert delivered_before_kill < total, "the kill came too late to test anything"
            with running(tmp_path / "victim", app, resources, app_id="worker"):
                deadline = time.monotonic() + 30
                while len({d.event["data"]["n"] for d in app.received("/work")}) < total:
                    assert time.monotonic() < deadline, "messages were lost"
                    time.sleep(0.05)
                counts = Counter(d.event["data"]["n"] for d in app.received("/work"))
                duplicates = sum(counts.values()) - total
                print(f"delivered before the kill: {delivered_before_kill}; duplicates: {duplicates}")
                assert set(counts) == set(range(total))
                assert duplicates <= concurrency
                check = SyncRedis.from_url(redis_url)
                deadline = time.monotonic() + 5
                while check.xpending(topic, "worker")["pending"]:
                    assert time.monotonic() < deadline, "acknowledged messages stay pending"
                    time.sleep(0.05)
    finally:
        app.stop()

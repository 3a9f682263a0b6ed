"""Delivery to the app (docs/pubsub.md: Subscriptions, Delivery) on every broker in tests/pubsub_support.py.

One sidecar per broker serves the whole module: its app subscribes to one topic per behaviour,
and each test publishes to its own topics. Retries are set to milliseconds (FAST_RETRIES).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.pubsub_support import (
    BROKERS,
    CARRIES_METADATA,
    FAST_RETRIES,
    Delivery,
    Reply,
    SubscriberApp,
    running,
    service_url,
    subscription,
)
from tests.support import SidecarProcess

TOKEN = "app-token-for-tests"

DECLARATIVE_V1 = """apiVersion: dapr.io/v1alpha1
kind: Subscription
metadata: {name: decl-v1}
spec: {pubsubname: pubsub, topic: decl-v1, route: /decl-v1, deadLetterTopic: decl-v1-dead}
"""
DECLARATIVE_V2 = """apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {name: decl-v2}
spec:
  pubsubname: pubsub
  topic: decl-v2
  routes:
    rules:
    - {match: 'event.type == "special"', path: /decl-v2-special}
    default: /decl-v2
  metadata: {concurrency: "1"}
scopes: [subscriber]
---
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {name: not-mine}
spec: {pubsubname: pubsub, topic: not-mine, routes: {default: /not-mine}}
scopes: [someone-else]
---
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {name: overridden}
spec: {pubsubname: pubsub, topic: both, routes: {default: /from-file}}
"""

SUBSCRIPTIONS = [
    subscription("orders", "/orders"),
    subscription("ordered", "/ordered", metadata={"concurrency": "1"}),
    subscription("alpha", "/alpha"),
    subscription("beta", "/beta"),
    subscription("retry", "/retry", deadLetterTopic="poison"),
    subscription("poison", "/poison"),
    subscription("failing", "/failing", metadata={"concurrency": "1"}),
    subscription("drop", "/drop", deadLetterTopic="dropped"),
    subscription("dropped", "/dropped"),
    subscription("gone", "/gone", deadLetterTopic="gone-dead"),
    subscription("gone-dead", "/gone-dead"),
    subscription("statuses", "/statuses"),
    subscription(
        "routed",
        routes={
            "rules": [
                {"match": 'event.type == "widget"', "path": "/widgets"},
                {"match": "event.data.size > 10", "path": "/big"},
                {"match": "   ", "path": "/blank-match"},
            ],
            "default": "/never",
        },
    ),
    subscription("picky", routes={"rules": [{"match": 'event.data.kind == "a"', "path": "/kind-a"}]}),
    subscription(
        "picky-dead",
        routes={"rules": [{"match": "event.data.missing.field", "path": "/x"}]},
        deadLetterTopic="picky-dead-letters",
    ),
    subscription("picky-dead-letters", "/picky-dead-letters"),
    subscription("raw", "/raw", metadata={"rawPayload": "true"}),
    subscription("expiring", "/expiring", metadata={"concurrency": "1"}),
    subscription("both", "/from-app"),
]


def answer(delivery: Delivery) -> Reply:
    path = delivery.path
    if path == "/retry":
        return 200, {"status": "RETRY"}
    if path == "/drop":
        return 200, {"status": "DROP"}
    if path == "/gone":
        return 404, b"no such route"
    event = json.loads(delivery.body) if path != "/raw" else {}
    data = event.get("data")
    if path == "/failing":
        return (500, b"boom") if data == "bad" else (200, None)
    if path == "/expiring" and data == "slow":
        time.sleep(1.5)
    if path == "/statuses":
        replies: dict[str, Reply] = {
            "empty": (200, None),
            "text": (200, b"fine, thanks"),
            "success": (200, {"status": "SUCCESS"}),
            "blank": (200, {"status": ""}),
            "other-2xx": (202, {"note": "no status"}),
            "lowercase": (200, {"status": "success"}),
            "server-error": (503, b"busy"),
        }
        return replies[str(data)]
    return 200, None


@dataclass
class World:
    kind: str
    sidecar: SidecarProcess
    app: SubscriberApp

    def publish(self, topic: str, data: Any, content_type: str = "application/json", **metadata: str) -> None:
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        params = {f"metadata.{k}": v for k, v in metadata.items()}
        response = httpx.post(
            f"{self.sidecar.url}/v1.0/publish/pubsub/{topic}",
            content=body,
            headers={"content-type": content_type},
            params=params,
        )
        assert response.status_code == 204, response.text


@pytest.fixture(scope="module", params=sorted(BROKERS))
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    kind: str = request.param
    workdir: Path = tmp_path_factory.mktemp(f"delivery-{kind}")
    url = service_url(request, kind)
    app = SubscriberApp(SUBSCRIPTIONS, answer).start()
    resources = {
        "pubsub.yaml": BROKERS[kind]("pubsub", workdir, url, FAST_RETRIES),
        "v1.yaml": DECLARATIVE_V1,
        "v2.yaml": DECLARATIVE_V2,
    }
    try:
        with running(workdir, app, resources, env={"APP_API_TOKEN": TOKEN}) as sidecar:
            yield World(kind, sidecar, app)
    finally:
        app.stop()


def data_of(deliveries: list[Delivery]) -> list[Any]:
    return [d.event["data"] for d in deliveries]


def unique() -> str:
    return uuid.uuid4().hex[:8]


def test_subscribe_call_and_deliveries_carry_the_app_token(world: World) -> None:
    (call,) = world.app.subscribe_calls
    assert call["dapr-api-token"] == TOKEN
    assert call["dapr-app-id"] == "subscriber"
    assert call["content-type"] == "application/json"
    marker = unique()
    world.publish("orders", {"marker": marker})
    (delivery,) = world.app.wait_for(1, "/orders", where=lambda d: d.event["data"] == {"marker": marker})
    assert delivery.headers["dapr-api-token"] == TOKEN
    assert delivery.headers["content-type"] == "application/cloudevents+json"
    assert delivery.headers["pubsubname"] == "pubsub"
    trace = delivery.event["traceparent"].split("-")
    assert delivery.headers["traceparent"].split("-")[1] == trace[1]  # the same trace continues


def test_metadata_travels_as_headers(world: World) -> None:
    if world.kind not in CARRIES_METADATA:
        pytest.skip(f"{world.kind} cannot carry message metadata (MQTT 3.1.1 has no headers)")
    marker = unique()
    world.publish("orders", {"marker": marker}, **{"customer-tier": "gold"})
    (delivery,) = world.app.wait_for(1, "/orders", where=lambda d: d.event["data"] == {"marker": marker})
    assert delivery.headers["customer-tier"] == "gold"


def test_in_order_with_concurrency_one(world: World) -> None:
    run = unique()
    for index in range(30):
        world.publish("ordered", {"run": run, "n": index})
    received = world.app.wait_for(30, "/ordered", where=lambda d: d.event["data"]["run"] == run)
    assert [d.event["data"]["n"] for d in received] == list(range(30))


def test_two_topics_at_once_stay_apart(world: World) -> None:
    run = unique()
    for index in range(10):
        world.publish("alpha", {"run": run, "n": index})
        world.publish("beta", {"run": run, "n": index})
    alpha = world.app.wait_for(10, "/alpha", where=lambda d: d.event["data"]["run"] == run)
    beta = world.app.wait_for(10, "/beta", where=lambda d: d.event["data"]["run"] == run)
    assert {d.event["topic"] for d in alpha} == {"alpha"}
    assert {d.event["topic"] for d in beta} == {"beta"}
    assert sorted(d.event["data"]["n"] for d in alpha) == list(range(10))
    assert sorted(d.event["data"]["n"] for d in beta) == list(range(10))


def test_retry_then_dead_letter_keeps_the_original_topic(world: World) -> None:
    marker = unique()
    world.publish("retry", marker)
    (dead,) = world.app.wait_for(1, "/poison", where=lambda d: d.event["data"] == marker)
    tries = [d for d in world.app.received("/retry") if d.event["data"] == marker]
    assert len(tries) == 3  # deliveryMaxAttempts
    assert dead.event["topic"] == "retry"
    assert dead.body == tries[0].body  # the original bytes, unchanged


def test_exhausted_retries_without_dead_letter_drop_and_do_not_block_the_topic(world: World) -> None:
    run = unique()
    world.publish("failing", "bad")
    world.publish("failing", {"after": run})
    world.app.wait_for(1, "/failing", where=lambda d: d.event["data"] == {"after": run})
    assert len([d for d in world.app.received("/failing") if d.event["data"] == "bad"]) >= 3
    deadline = time.monotonic() + 5
    while "dropping it (the subscription has no deadLetterTopic)" not in world.sidecar.log():
        assert time.monotonic() < deadline, world.sidecar.log()
        time.sleep(0.05)


def test_drop_status_goes_to_dead_letter_without_retries(world: World) -> None:
    marker = unique()
    world.publish("drop", marker)
    world.app.wait_for(1, "/dropped", where=lambda d: d.event["data"] == marker)
    assert len([d for d in world.app.received("/drop") if d.event["data"] == marker]) == 1


def test_404_means_drop(world: World) -> None:
    marker = unique()
    world.publish("gone", marker)
    (dead,) = world.app.wait_for(1, "/gone-dead", where=lambda d: d.event["data"] == marker)
    assert dead.event["topic"] == "gone"
    assert len([d for d in world.app.received("/gone") if d.event["data"] == marker]) == 1


@pytest.mark.parametrize(
    ("reply", "calls"),
    [
        ("empty", 1),
        ("text", 1),
        ("success", 1),
        ("blank", 1),
        ("other-2xx", 1),
        ("lowercase", 3),  # status strings are case-sensitive: unknown means RETRY
        ("server-error", 3),
    ],
)
def test_how_replies_are_read(world: World, reply: str, calls: int) -> None:
    message_id = unique()
    world.publish("statuses", reply, **{"cloudevent.id": message_id})
    world.app.wait_for(calls, "/statuses", where=lambda d: d.event["id"] == message_id)
    # A later message on the same topic proves no further tries of this one are coming.
    fence = unique()
    world.publish("statuses", "empty", **{"cloudevent.id": fence})
    world.app.wait_for(1, "/statuses", where=lambda d: d.event["id"] == fence)
    time.sleep(0.2)
    assert len([d for d in world.app.received("/statuses") if d.event["id"] == message_id]) == calls


def test_routing_rules_are_cel_over_the_event(world: World) -> None:
    run = unique()
    world.publish("routed", {"run": run, "size": 1}, **{"cloudevent.type": "widget"})
    world.publish("routed", {"run": run, "size": 11})
    world.publish("routed", {"run": run, "size": 10.5})
    world.publish("routed", {"run": run, "size": 2})

    def ours(d: Delivery) -> bool:
        return bool(d.event["data"]["run"] == run)

    assert data_of(world.app.wait_for(1, "/widgets", where=ours)) == [{"run": run, "size": 1}]
    big = world.app.wait_for(2, "/big", where=ours)
    assert sorted(d["size"] for d in data_of(big)) == [10.5, 11]
    # A blank match always matches, so the default route is never reached.
    assert data_of(world.app.wait_for(1, "/blank-match", where=ours)) == [{"run": run, "size": 2}]
    assert not [d for d in world.app.received("/never")]


def test_no_matching_rule_drops_and_an_evaluation_error_dead_letters(world: World) -> None:
    run = unique()
    world.publish("picky", {"run": run, "kind": "b"})
    world.publish("picky", {"run": run, "kind": "a"})
    world.app.wait_for(1, "/kind-a", where=lambda d: d.event["data"]["run"] == run)
    world.publish("picky-dead", {"run": run})
    (dead,) = world.app.wait_for(1, "/picky-dead-letters", where=lambda d: d.event["data"] == {"run": run})
    assert dead.event["topic"] == "picky-dead"
    assert [d for d in world.app.received() if d.path == "/kind-a" and d.event["data"]["kind"] == "b"] == []


def test_raw_payload_subscription_gets_the_bytes_as_data_base64(world: World) -> None:
    payload = f"raw bytes {unique()}".encode()
    world.publish("raw", payload, content_type="application/octet-stream", rawPayload="true")
    (delivery,) = world.app.wait_for(
        1, "/raw", where=lambda d: base64.b64decode(d.event["data_base64"]) == payload
    )
    event = delivery.event
    assert event["datacontenttype"] == "application/octet-stream"
    assert event["source"] == "Dapr" and event["type"] == "com.dapr.event.sent"
    assert event["topic"] == "raw" and event["pubsubname"] == "pubsub"
    assert "data" not in event


def test_a_raw_published_json_object_reaches_a_normal_subscriber_unchanged(world: World) -> None:
    body = json.dumps({"plain": unique(), "id": "mine"}).encode()
    world.publish("orders", body, rawPayload="true")
    (delivery,) = world.app.wait_for(1, "/orders", where=lambda d: d.body == body)
    assert delivery.event["id"] == "mine"


def test_expired_messages_are_not_delivered(world: World) -> None:
    run = unique()
    world.publish("expiring", "slow")  # holds the subscription (concurrency 1) for 1.5 s
    world.publish("expiring", {"run": run, "ttl": True}, ttlInSeconds="1")
    world.publish("expiring", {"run": run, "ttl": False})
    world.app.wait_for(1, "/expiring", where=lambda d: d.event["data"] == {"run": run, "ttl": False})
    assert not [d for d in world.app.received("/expiring") if d.event["data"] == {"run": run, "ttl": True}]


def test_declarative_subscriptions_v1_and_v2_with_scopes(world: World) -> None:
    marker = unique()
    world.publish("decl-v1", marker)
    world.publish("decl-v2", marker)
    world.publish("decl-v2", marker, **{"cloudevent.type": "special"})
    world.publish("both", marker)
    world.app.wait_for(1, "/decl-v1", where=lambda d: d.event["data"] == marker)
    world.app.wait_for(1, "/decl-v2", where=lambda d: d.event["data"] == marker)
    world.app.wait_for(1, "/decl-v2-special", where=lambda d: d.event["data"] == marker)
    # The app's own subscription to the same topic replaces the file's.
    world.app.wait_for(1, "/from-app", where=lambda d: d.event["data"] == marker)
    assert not world.app.received("/from-file")


def test_metadata_lists_every_subscription(world: World) -> None:
    listed = httpx.get(world.sidecar.url + "/v1.0/metadata").json()["subscriptions"]
    by_topic = {s["topic"]: s for s in listed}
    assert "not-mine" not in by_topic
    assert by_topic["decl-v1"] == {
        "pubsubname": "pubsub",
        "topic": "decl-v1",
        "rules": [{"path": "/decl-v1"}],
        "deadLetterTopic": "decl-v1-dead",
        "type": "DECLARATIVE",
    }
    assert by_topic["decl-v2"]["rules"] == [
        {"match": 'event.type == "special"', "path": "/decl-v2-special"},
        {"path": "/decl-v2"},
    ]
    assert by_topic["decl-v2"]["metadata"] == {"concurrency": "1"}
    assert by_topic["both"]["type"] == "PROGRAMMATIC"
    assert by_topic["both"]["rules"] == [{"path": "/from-app"}]
    assert by_topic["retry"]["deadLetterTopic"] == "poison"
    assert by_topic["orders"] == {
        "pubsubname": "pubsub",
        "topic": "orders",
        "rules": [{"path": "/orders"}],
        "deadLetterTopic": "",
        "type": "PROGRAMMATIC",
    }
    assert len(listed) == len(SUBSCRIPTIONS) + 2

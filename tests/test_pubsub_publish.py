"""The publish API (docs/pubsub.md: Publishing, topic scopes) on every broker in tests/pubsub_support.py.

What was published is checked where it matters: in the event a real subscriber app receives.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.pubsub_support import (
    BROKERS,
    CARRIES_METADATA,
    EXPIRES_MESSAGES,
    Delivery,
    SubscriberApp,
    running,
    service_url,
    subscription,
)
from tests.support import SidecarProcess

TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$")
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

SUBSCRIPTIONS = [
    subscription("events", "/events"),
    subscription("a/b", "/slashes"),
    subscription("sub-ok", "/sub-ok", pubsub="scoped"),
    subscription("sub-denied", "/sub-denied", pubsub="scoped"),
]
SCOPES = {
    "publishingScopes": "subscriber=allowed-topic,sub-ok,sub-denied;someone-else=other-topic",
    "subscriptionScopes": "subscriber=sub-ok",
    "protectedTopics": "secret",
}


@dataclass
class World:
    kind: str
    sidecar: SidecarProcess
    app: SubscriberApp
    api: httpx.Client

    def receive(self, mark: str, path: str = "/events") -> Delivery:
        """The one delivery whose event carries ``mark`` (in its data or its data_base64)."""
        (delivery,) = self.app.wait_for(1, path, where=lambda d: carries(d, mark))
        return delivery


def carries(delivery: Delivery, mark: str) -> bool:
    binary = base64.b64decode(delivery.event.get("data_base64") or "")
    return mark.encode() in delivery.body or mark.encode() in binary


@pytest.fixture(scope="module", params=sorted(BROKERS))
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    kind: str = request.param
    workdir: Path = tmp_path_factory.mktemp(f"publish-{kind}")
    url = service_url(request, kind)
    factory = BROKERS[kind]
    resources = {
        "pubsub.yaml": factory("pubsub", workdir, url, {}),
        "scoped.yaml": factory("scoped", workdir, url, SCOPES),
        "limited.yaml": factory("limited", workdir, url, {"allowedTopics": "only-this"}),
    }
    app = SubscriberApp(SUBSCRIPTIONS).start()
    try:
        with running(workdir, app, resources) as sidecar, sidecar.client() as api:
            yield World(kind, sidecar, app, api)
    finally:
        app.stop()


def marker() -> str:
    return f"m-{uuid.uuid4().hex[:10]}"


def publish(world: World, body: bytes, content_type: str | None = None, **params: str) -> httpx.Response:
    headers = {"content-type": content_type} if content_type else {}
    return world.api.post("/v1.0/publish/pubsub/events", content=body, headers=headers, params=params)


# --- the envelope --------------------------------------------------------------------------------


def test_envelope_fields_as_daprd_builds_them(world: World) -> None:
    mark = marker()
    before = datetime.now(UTC).replace(microsecond=0)
    assert publish(world, json.dumps({"m": mark}).encode(), "application/json").status_code == 204
    delivery = world.receive(mark)
    event = delivery.event
    assert list(json.loads(delivery.body)) == sorted(event)  # a Go map: keys in order
    assert UUID4.match(event["id"])
    assert event["source"] == "subscriber"
    assert event["type"] == "com.dapr.event.sent"
    assert event["specversion"] == "1.0"
    assert event["datacontenttype"] == "application/json"
    assert event["data"] == {"m": mark}
    assert event["topic"] == "events" and event["pubsubname"] == "pubsub"
    assert TRACEPARENT.match(event["traceparent"]) and event["traceid"] == event["traceparent"]
    assert event["tracestate"] == ""
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)$", event["time"])
    sent = datetime.fromisoformat(event["time"])
    assert before - timedelta(seconds=1) <= sent <= datetime.now(UTC) + timedelta(seconds=1)
    assert "expiration" not in event and "data_base64" not in event and "subject" not in event


def test_json_numbers_keep_their_exact_text_and_html_is_escaped_as_go_does(world: World) -> None:
    mark = marker()
    body = '{"n": 1.10, "big": 123456789012345678901234567890, "e": 1e3, "z": -0, "s": "<&>", "m": "MARK"}'
    body = body.replace("MARK", mark)
    assert publish(world, body.encode(), "application/json; charset=utf-8").status_code == 204
    delivery = world.receive(mark)
    expected = (
        '"data":{"big":123456789012345678901234567890,"e":1e3,"m":"MARK","n":1.10,'
        '"s":"\\u003c\\u0026\\u003e","z":-0}'
    )
    assert expected.replace("MARK", mark).encode() in delivery.body
    assert delivery.event["datacontenttype"] == "application/json; charset=utf-8"


@pytest.mark.parametrize(
    ("content_type", "shown_type"),
    [
        (None, "text/plain"),  # without a Content-Type a JSON body arrives as a string
        ("text/plain; charset=utf-8", "text/plain; charset=utf-8"),
        ("application/json", "application/json"),  # not JSON after all: kept as a string
        ("application/xml", "application/xml"),
    ],
)
def test_bodies_that_are_not_json_values_become_string_data(
    world: World, content_type: str | None, shown_type: str
) -> None:
    mark = marker()
    text = '{"broken": ' + mark
    assert publish(world, text.encode(), content_type).status_code == 204
    event = world.receive(mark).event
    assert event["datacontenttype"] == shown_type
    assert event["data"] == text


def test_binary_bodies_travel_as_data_base64(world: World) -> None:
    mark = marker()
    payload = b"\x00\xff" + mark.encode()
    assert publish(world, payload, "application/octet-stream").status_code == 204
    event = world.receive(mark).event
    assert base64.b64decode(event["data_base64"]) == payload
    assert "data" not in event


def test_the_callers_trace_continues(world: World) -> None:
    mark = marker()
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    response = world.api.post(
        "/v1.0/publish/pubsub/events",
        json=mark,
        headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01", "tracestate": "vendor=1"},
    )
    assert response.status_code == 204
    event = world.receive(mark).event
    version, trace_id, span, flags = event["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", trace, "01")
    assert span != "00f067aa0ba902b7"
    assert event["tracestate"] == "vendor=1"


def test_cloudevent_metadata_overrides(world: World) -> None:
    mark = marker()
    parent = f"00-{'a' * 32}-{'b' * 16}-00"
    params = {
        "metadata.cloudevent.id": mark,
        "metadata.CloudEvent.Type": "my.type",
        "metadata.cloudevent.source": "my-source",
        "metadata.cloudevent.subject": "the-subject",
        "metadata.cloudevent.traceparent": parent,
    }
    assert publish(world, b"hello", "text/plain", **params).status_code == 204
    event = world.receive(mark).event
    assert event["id"] == mark and event["type"] == "my.type" and event["source"] == "my-source"
    assert event["subject"] == "the-subject"
    assert event["traceparent"] == event["traceid"] == parent


def test_cloudevent_passthrough_keeps_the_event(world: World) -> None:
    mark = marker()
    sent = {
        "id": mark,
        "specversion": "1.0",
        "source": "elsewhere",
        "type": "my.type",
        "topic": "not-this",
        "pubsubname": "nor-this",
        "myext": "kept",
        "data": {"x": 1.50},
    }
    body = json.dumps(sent).replace("1.5", "1.50").encode()
    assert publish(world, body, "application/cloudevents+json").status_code == 204
    delivery = world.receive(mark)
    event = delivery.event
    assert event["topic"] == "events" and event["pubsubname"] == "pubsub"
    assert (event["id"], event["source"], event["type"], event["myext"]) == (
        mark,
        "elsewhere",
        "my.type",
        "kept",
    )
    assert b'"data":{"x":1.50}' in delivery.body
    assert TRACEPARENT.match(event["traceid"]) and event["traceparent"] == event["traceid"]
    assert event["tracestate"] == "" and "time" in event
    assert "datacontenttype" not in event  # daprd adds none to a CloudEvent


def test_cloudevent_passthrough_fills_only_what_is_missing(world: World) -> None:
    mark = marker()
    sent = {"id": mark, "source": None, "time": "2020-01-01T00:00:00Z", "traceid": "t-1", "data": "x"}
    assert publish(world, json.dumps(sent).encode(), "application/cloudevents+json").status_code == 204
    event = world.receive(mark).event
    assert event["source"] == "Dapr" and event["type"] == "com.dapr.event.sent"
    assert event["specversion"] == "1.0"
    assert event["time"] == "2020-01-01T00:00:00Z"
    assert event["traceid"] == "t-1" and "traceparent" not in event


def test_ttl_is_carried_by_the_broker_or_as_expiration(world: World) -> None:
    mark = marker()
    assert publish(world, mark.encode(), "text/plain", **{"metadata.ttlInSeconds": "60"}).status_code == 204
    event = world.receive(mark).event
    if world.kind in EXPIRES_MESSAGES:  # MESSAGE_TTL: the broker expires the message itself
        assert "expiration" not in event
    else:
        expires = datetime.fromisoformat(event["expiration"])
        assert timedelta(seconds=58) < expires - datetime.now(UTC) <= timedelta(seconds=61)


@pytest.mark.parametrize("path", ["/v1.0/publish/pubsub/a/b", "/v1.0/publish/pubsub/a%2Fb"])
def test_put_and_topics_with_slashes(world: World, path: str) -> None:
    mark = marker()
    assert world.api.put(path, content=mark, headers={"content-type": "text/plain"}).status_code == 204
    assert world.receive(mark, "/slashes").event["topic"] == "a/b"


# --- scopes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pubsub", "topic", "status"),
    [
        ("scoped", "allowed-topic", 204),
        ("scoped", "other-topic", 403),  # the app's publishing scope does not list it
        ("scoped", "secret", 403),  # protected, and the app has no scope for it
        ("limited", "only-this", 204),
        ("limited", "anything-else", 403),
    ],
)
def test_publishing_scopes(world: World, pubsub: str, topic: str, status: int) -> None:
    response = world.api.post(f"/v1.0/publish/{pubsub}/{topic}", json="x")
    assert response.status_code == status, response.text
    if status == 403:
        body = response.json()
        assert body["errorCode"] == "ERR_PUBSUB_FORBIDDEN"
        assert body["message"] == f"topic {topic} is not allowed for app id subscriber"


def test_subscription_scopes(world: World) -> None:
    mark = marker()
    assert world.api.post("/v1.0/publish/scoped/sub-denied", json=mark).status_code == 204
    assert world.api.post("/v1.0/publish/scoped/sub-ok", json=mark).status_code == 204
    world.receive(mark, "/sub-ok")
    assert not world.app.received("/sub-denied")
    assert "subscription scoped/sub-denied is not allowed for app id subscriber" in world.sidecar.log()


# --- errors ---------------------------------------------------------------------------------------


def test_unknown_pubsub_is_404_with_the_request_metadata(world: World) -> None:
    response = world.api.post("/v1.0/publish/nosuch/t?metadata.k=v", json=1)
    assert response.status_code == 404
    assert response.json() == {
        "errorCode": "ERR_PUBSUB_NOT_FOUND",
        "message": "pubsub nosuch is not found",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "domain": "dapr.io",
                "metadata": {"k": "v"},
                "reason": "DAPR_PUBSUB_NOT_FOUND",
            }
        ],
    }


@pytest.mark.parametrize(
    ("method", "path", "params", "headers", "body", "status", "code", "message"),
    [
        (
            "POST",
            "/v1.0/publish/pubsub/",
            {},
            {},
            b"1",
            404,
            "ERR_TOPIC_NAME_EMPTY",
            "topic is empty in pubsub pubsub",
        ),
        (
            "POST",
            "/v1.0/publish/pubsub/t",
            {"metadata.rawPayload": "maybe"},
            {},
            b"1",
            400,
            "ERR_PUBSUB_REQUEST_METADATA",
            "failed deserializing metadata. Error: "
            "rawPayload value must be a valid boolean: actual is 'maybe'",
        ),
        (
            "POST",
            "/v1.0/publish/pubsub/t",
            {"metadata.ttlInSeconds": "soon"},
            {},
            b"1",
            400,
            "ERR_PUBSUB_REQUEST_METADATA",
            "failed deserializing metadata. Error: ttl value must be a valid integer: actual is 'soon'",
        ),
        (
            "POST",
            "/v1.0/publish/pubsub/t",
            {},
            {"content-type": "application/cloudevents+json"},
            b"{nope",
            500,
            "ERR_PUBSUB_CLOUD_EVENTS_SER",
            "cannot create cloudevent",
        ),
        (
            "POST",
            "/v1.0/publish/pubsub/t",
            {},
            {"content-type": "application/cloudevents+json"},
            b"[1]",
            500,
            "ERR_PUBSUB_CLOUD_EVENTS_SER",
            "cannot create cloudevent",
        ),
        (
            "GET",
            "/v1.0/publish/pubsub/t",
            {},
            {},
            b"",
            404,
            "ERR_DIRECT_INVOKE",
            "failed getting app id either from the URL path or the header dapr-app-id",
        ),
    ],
)
def test_publish_errors(
    world: World,
    method: str,
    path: str,
    params: dict[str, str],
    headers: dict[str, str],
    body: bytes,
    status: int,
    code: str,
    message: str,
) -> None:
    response = world.api.request(method, path, params=params, headers=headers, content=body)
    assert response.status_code == status, response.text
    assert response.json()["errorCode"] == code
    assert response.json()["message"] == message


# --- bulk publish ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1.0-alpha1", "v1.0"])
def test_bulk_publish_wraps_each_entry(world: World, version: str) -> None:
    mark = marker()
    entries = [
        {"entryId": "1", "event": f"text {mark}", "contentType": "text/plain"},
        {"entryID": "2", "event": {"m": mark, "n": 2.0}, "contentType": "application/json"},
        {
            "entryId": "3",
            "event": base64.b64encode(f"bin {mark}".encode()).decode(),
            "contentType": "application/octet-stream",
            "metadata": {"own": "yes"},
        },
        {
            "entryId": "4",
            "event": {"id": f"ce-{mark}", "source": "s", "type": "t", "data": "ce"},
            "contentType": "application/cloudevents+json",
        },
    ]
    response = world.api.post(f"/{version}/publish/bulk/pubsub/events?metadata.shared=req", json=entries)
    assert response.status_code == 204, response.text

    got = world.app.wait_for(4, "/events", where=lambda d: carries(d, mark))
    by_type = {d.event.get("datacontenttype", "ce"): d for d in got}
    assert by_type["text/plain"].event["data"] == f"text {mark}"
    assert b'"data":{"m":"%s","n":2}' % mark.encode() in by_type["application/json"].body  # Go float64
    binary = by_type["application/octet-stream"]
    assert base64.b64decode(binary.event["data_base64"]) == f"bin {mark}".encode()
    # Request metadata reaches only the entries that have metadata of their own.
    if world.kind in CARRIES_METADATA:
        assert binary.headers["own"] == "yes" and binary.headers["shared"] == "req"
    assert "shared" not in by_type["text/plain"].headers
    assert by_type["ce"].event["id"] == f"ce-{mark}" and by_type["ce"].event["topic"] == "events"
    ids = {d.event["id"] for d in got}
    assert len(ids) == 4


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"entryId": "1"}, "DAPR_PUBSUB_UNMARSHAL_EVENTS"),
        ([{"entryId": "1", "event": {"a": 1}, "contentType": "text/plain"}], "DAPR_PUBSUB_MARSHAL_ENVELOPE"),
        ([{"entryId": "1", "event": "x", "contentType": "image/png"}], "DAPR_PUBSUB_MARSHAL_ENVELOPE"),
        (
            [{"entryId": "1", "event": "not base64!", "contentType": "application/octet-stream"}],
            "DAPR_PUBSUB_MARSHAL_ENVELOPE",
        ),
        ([{"event": "x", "contentType": "text/plain"}], "DAPR_PUBSUB_MARSHAL_EVENTS"),
        (
            [
                {"entryId": "1", "event": "x", "contentType": "text/plain"},
                {"entryId": "1", "event": "y", "contentType": "text/plain"},
            ],
            "DAPR_PUBSUB_MARSHAL_EVENTS",
        ),
    ],
)
def test_bulk_publish_rejects_bad_entries(world: World, body: Any, reason: str) -> None:
    response = world.api.post("/v1.0-alpha1/publish/bulk/pubsub/events", json=body)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["errorCode"] == "ERR_PUBSUB_EVENTS_SER"
    assert [d["reason"] for d in answer["details"] if "reason" in d] == [reason]


def test_bulk_publish_errors_shared_with_publish(world: World) -> None:
    entries = [{"entryId": "1", "event": "x", "contentType": "text/plain"}]
    unknown = world.api.post("/v1.0-alpha1/publish/bulk/nosuch/t", json=entries)
    assert (unknown.status_code, unknown.json()["errorCode"]) == (404, "ERR_PUBSUB_NOT_FOUND")
    forbidden = world.api.post("/v1.0-alpha1/publish/bulk/scoped/secret", json=entries)
    assert (forbidden.status_code, forbidden.json()["errorCode"]) == (403, "ERR_PUBSUB_FORBIDDEN")
    assert world.api.post("/v1.0-alpha1/publish/bulk/pubsub/events", json=[]).status_code == 204


def test_metadata_lists_the_pubsub_components(world: World) -> None:
    components = {c["name"]: c for c in world.api.get("/v1.0/metadata").json()["components"]}
    assert components["pubsub"]["type"] == f"pubsub.{world.kind}"
    expected = {
        "in-memory": ["SUBSCRIBE_WILDCARDS"],
        "sqlite": ["MESSAGE_TTL", "RETAINED_MESSAGES"],
        "redis": ["RETAINED_MESSAGES"],
        "jetstream": ["RETAINED_MESSAGES"],
    }
    if world.kind in expected:
        assert components["pubsub"]["capabilities"] == expected[world.kind]

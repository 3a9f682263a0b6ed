"""W3C trace context from a publish to the subscriber's handler, through real processes: a
publishing sidecar, a subscribing sidecar and its app sharing one pubsub.sqlite file; and the
OTLP export of the same spans to a local receiver."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.app_process import AppProcess, Delivered, wait_until
from tests.state_support import component
from tests.support import SidecarProcess, free_port, start_sidecar

TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
CALLER = f"00-{TRACE}-{CALLER_SPAN}-01"
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]$")
SUBSCRIPTIONS: list[dict[str, Any]] = [
    {"pubsubname": "pubsub", "topic": "orders", "route": "/orders"},
    {"pubsubname": "pubsub", "topic": "raw", "route": "/raw", "metadata": {"rawPayload": "true"}},
]


def ids(traceparent: str) -> tuple[str, str]:
    match = TRACEPARENT.match(traceparent)
    assert match, traceparent
    return match[1], match[2]


@dataclass
class Pair:
    publisher: SidecarProcess
    subscriber: SidecarProcess
    app: AppProcess

    def publish(self, topic: str, body: str, headers: dict[str, str], query: str = "") -> str:
        """Publish; the response's traceparent."""
        with self.publisher.client() as client:
            answer = client.post(f"/v1.0/publish/pubsub/{topic}{query}", content=body, headers=headers)
        assert answer.status_code == 204, answer.text
        return answer.headers["traceparent"]

    def delivered(self, path: str, marker: str) -> Delivered:
        def found() -> list[Delivered]:
            return [d for d in self.app.deliveries(path) if marker in d.body]

        wait_until(found, what=f"delivery of {marker}")
        return found()[0]


def start_pair(
    tmp_path: Path,
    publisher_env: dict[str, str] | None = None,
    subscriber_env: dict[str, str] | None = None,
    subscriber_config: Path | None = None,
) -> Pair:
    resources = {
        "pubsub.yaml": component(
            "pubsub",
            "pubsub.sqlite",
            {"connectionString": str(tmp_path / "pubsub.db"), "pollInterval": "50ms"},
        )
    }
    app = AppProcess(tmp_path, SUBSCRIPTIONS)
    extra = ["--config", str(subscriber_config)] if subscriber_config else []
    subscriber = start_sidecar(
        tmp_path / "subscriber",
        app_id="subscriber",
        resources=resources,
        extra_args=["--app-port", str(app.port), *extra],
        env=subscriber_env,
        wait_path="/v1.0/healthz",
    )
    publisher = start_sidecar(
        tmp_path / "publisher", app_id="publisher", resources=resources, env=publisher_env
    )
    return Pair(publisher, subscriber, app)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    running = start_pair(tmp_path_factory.mktemp("tracing"))
    yield running
    running.publisher.stop()
    running.subscriber.stop()
    running.app.stop()


def test_the_callers_trace_runs_through_publish_and_delivery(pair: Pair) -> None:
    answered = pair.publish("orders", "first", {"traceparent": CALLER, "tracestate": "vendor=a"})
    trace, publish_span = ids(answered)
    assert trace == TRACE
    assert publish_span != CALLER_SPAN
    assert answered.endswith("-01")  # the caller's sampling decision is kept

    delivery = pair.delivered("/orders", "first")
    event = delivery.event
    # The event carries the publish's span, the one the publisher was answered with (as daprd).
    assert event["traceparent"] == event["traceid"] == answered
    assert event["tracestate"] == "vendor=a"
    # The delivery request is a child span in the same trace.
    trace_at_app, delivery_span = ids(delivery.headers["traceparent"])
    assert trace_at_app == TRACE
    assert delivery_span not in (publish_span, CALLER_SPAN)
    assert delivery.headers["tracestate"] == "vendor=a"


def test_a_publish_without_traceparent_starts_a_trace(pair: Pair) -> None:
    answered = pair.publish("orders", "second", {"tracestate": "vendor=lost"})
    trace, _ = ids(answered)
    assert trace != TRACE
    delivery = pair.delivered("/orders", "second")
    assert delivery.event["traceparent"] == answered
    # A tracestate without the trace it belongs to is not passed on (W3C, and daprd).
    assert delivery.event["tracestate"] == ""
    assert "tracestate" not in delivery.headers
    assert ids(delivery.headers["traceparent"])[0] == trace


def test_a_malformed_traceparent_starts_a_trace(pair: Pair) -> None:
    answered = pair.publish("orders", "third", {"traceparent": "00-not-a-trace-01"})
    trace, _ = ids(answered)
    delivery = pair.delivered("/orders", "third")
    assert ids(delivery.headers["traceparent"])[0] == trace == ids(delivery.event["traceparent"])[0]


def test_bulk_entries_get_spans_of_their_own(pair: Pair) -> None:
    entries = [{"entryId": str(n), "event": f"bulk-{n}", "contentType": "text/plain"} for n in range(2)]
    with pair.publisher.client() as client:
        answer = client.post(
            "/v1.0-alpha1/publish/bulk/pubsub/orders",
            json=entries,
            headers={"traceparent": CALLER},
        )
    assert answer.status_code == 204
    request_span = ids(answer.headers["traceparent"])[1]
    spans = set()
    for n in range(2):
        event = pair.delivered("/orders", f"bulk-{n}").event
        trace, span = ids(event["traceparent"])
        assert trace == TRACE
        spans.add(span)
    assert len(spans) == 2 and request_span not in spans


def test_raw_payloads_keep_their_trace(pair: Pair) -> None:
    """daprd loses it (dapr/dapr#7918): the trace travels in the message metadata instead."""
    pair.publish("raw", "raw-body", {"traceparent": CALLER}, "?metadata.rawPayload=true")
    delivery = pair.delivered("/raw", "cmF3LWJvZHk=")  # base64 of raw-body
    assert ids(delivery.event["traceparent"])[0] == TRACE
    assert ids(delivery.headers["traceparent"])[0] == TRACE


def test_baggage_reaches_the_subscriber(pair: Pair) -> None:
    """daprd drops it (dapr/dapr#10302)."""
    pair.publish("orders", "with-baggage", {"traceparent": CALLER, "baggage": "tenant=acme,region=eu"})
    assert pair.delivered("/orders", "with-baggage").headers["baggage"] == "tenant=acme,region=eu"


def test_responses_carry_traceparent_except_health_probes(pair: Pair) -> None:
    with pair.publisher.client() as client:
        for path in ("/v1.0/metadata", "/v1.0/state/statestore/missing", "/v1.0/nothing-here"):
            answer = client.get(path, headers={"traceparent": CALLER})
            assert ids(answer.headers["traceparent"])[0] == TRACE, path
        for path in ("/v1.0/healthz", "/v1.0/healthz/outbound"):
            assert "traceparent" not in client.get(path, headers={"traceparent": CALLER}).headers


# --- OTLP export ---------------------------------------------------------------------------------


class Receiver:
    """An OTLP/HTTP endpoint that keeps every span it is sent."""

    def __init__(self) -> None:
        self.port = free_port()
        self.paths: list[str] = []
        self.spans: list[tuple[str, Any]] = []  # (service.name, span)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with receiver._lock:
                    receiver.paths.append(self.path)
                    for resource_spans in request.resource_spans:
                        attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                        for scope_spans in resource_spans.scope_spans:
                            for span in scope_spans.spans:
                                receiver.spans.append((attributes.get("service.name", ""), span))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def find(self, service: str, name: str) -> Any:
        with self._lock:
            return next((s for svc, s in self.spans if svc == service and s.name == name), None)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_spans_are_exported_when_an_otlp_endpoint_is_set(tmp_path: Path) -> None:
    receiver = Receiver()
    # The subscriber is configured through its Configuration, the publisher through the environment.
    config = tmp_path / "config.yaml"
    config.write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: tracing}\n"
        f"spec:\n  tracing:\n    samplingRate: '1'\n    otel:\n"
        f"      endpointAddress: 127.0.0.1:{receiver.port}\n      isSecure: false\n      protocol: http\n"
    )
    quick = {"OTEL_BSP_SCHEDULE_DELAY": "50"}  # the SDK's batch delay, in milliseconds
    publisher_env = {**quick, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}"}
    running = start_pair(tmp_path, publisher_env, quick, config)
    try:
        answered = running.publish("orders", "exported", {"traceparent": CALLER})
        delivery = running.delivered("/orders", "exported")
        publish_span = ids(answered)[1]
        delivery_span = ids(delivery.headers["traceparent"])[1]

        wait_until(lambda: both_exported(receiver), what="both spans exported", timeout=15)
        server = receiver.find("publisher", "POST /v1.0/publish")
        consumer = receiver.find("subscriber", "pubsub/orders")
        assert server.trace_id.hex() == consumer.trace_id.hex() == TRACE
        # publisher's span: child of the caller's; the delivery's: child of the publisher's.
        assert (server.span_id.hex(), server.parent_span_id.hex()) == (publish_span, CALLER_SPAN)
        assert (consumer.span_id.hex(), consumer.parent_span_id.hex()) == (delivery_span, publish_span)
        attributes = {a.key: a.value for a in consumer.attributes}
        assert attributes["messaging.destination.name"].string_value == "orders"
        assert attributes["http.response.status_code"].int_value == 200
        assert set(receiver.paths) == {"/v1/traces"}
        # Health probes make no spans.
        assert receiver.find("publisher", "GET /v1.0/healthz") is None
        assert "tracing: spans are exported to" in running.publisher.log()
    finally:
        running.publisher.stop()
        running.subscriber.stop()
        running.app.stop()
        receiver.close()


def both_exported(receiver: Receiver) -> bool:
    return receiver.find("publisher", "POST /v1.0/publish") is not None and (
        receiver.find("subscriber", "pubsub/orders") is not None
    )

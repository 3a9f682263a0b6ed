"""Pub/sub test helpers: a broker YAML per broker under test, and a real subscriber app.

``BROKERS`` maps a broker name to a function that writes its Component YAML; the generic tests
in tests/test_pubsub_*.py run once per entry, so a new broker joins them with one line here.
Factories get the pubsub name, the test's work folder, the URL of the broker's server (from the
fixture named in ``SERVICE_FIXTURES``; empty for brokers without one) and extra metadata (fast
retry settings and the like).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.broker_support import topic_prefix
from tests.state_support import component, redis_metadata
from tests.support import SidecarProcess, free_port, start_sidecar

BrokerFactory = Callable[[str, Path, str, dict[str, str]], str]

# Retries in milliseconds, so dead-letter tests take a moment, not minutes.
FAST_RETRIES = {
    "deliveryMaxAttempts": "3",
    "deliveryRetryInterval": "20ms",
    "deliveryMaxRetryInterval": "50ms",
}


def in_memory(name: str, workdir: Path, redis_url: str, extra: dict[str, str]) -> str:
    return component(name, "pubsub.in-memory", extra)


def sqlite(name: str, workdir: Path, redis_url: str, extra: dict[str, str]) -> str:
    metadata = {"connectionString": str(workdir / f"{name}.db"), "pollInterval": "50ms", **extra}
    return component(name, "pubsub.sqlite", metadata)


def redis(name: str, workdir: Path, redis_url: str, extra: dict[str, str]) -> str:
    return component(name, "pubsub.redis", {**redis_metadata(redis_url), **extra})


def jetstream(name: str, workdir: Path, nats_url: str, extra: dict[str, str]) -> str:
    metadata = {"natsURL": nats_url, "topicPrefix": topic_prefix("."), "ackWait": "5s", **extra}
    return component(name, "pubsub.jetstream", metadata)


def rabbitmq(name: str, workdir: Path, rabbitmq_url: str, extra: dict[str, str]) -> str:
    metadata = {"connectionString": rabbitmq_url, "topicPrefix": topic_prefix("."), **extra}
    return component(name, "pubsub.rabbitmq", metadata)


def mqtt3(name: str, workdir: Path, mqtt_url: str, extra: dict[str, str]) -> str:
    return component(name, "pubsub.mqtt3", {"url": mqtt_url, "topicPrefix": topic_prefix("/"), **extra})


BROKERS: dict[str, BrokerFactory] = {
    "in-memory": in_memory,
    "sqlite": sqlite,
    "redis": redis,
    "jetstream": jetstream,
    "rabbitmq": rabbitmq,
    "mqtt3": mqtt3,
}
# The session fixture (tests/conftest.py) that gives each broker's server URL.
SERVICE_FIXTURES = {
    "redis": "redis_url",
    "jetstream": "nats_url",
    "rabbitmq": "rabbitmq_url",
    "mqtt3": "mqtt_url",
}
# Brokers that several sidecar processes can share (fan-out and competing-consumer tests).
SHARED_BROKERS = frozenset({"sqlite", "redis", "jetstream", "rabbitmq", "mqtt3"})
# Brokers that carry message metadata to the subscriber (MQTT 3.1.1 has no headers).
CARRIES_METADATA = frozenset(BROKERS) - {"mqtt3"}
# Brokers with MESSAGE_TTL: they expire messages themselves, so the envelope has no expiration.
EXPIRES_MESSAGES = frozenset({"sqlite", "rabbitmq"})
# Brokers whose SIGKILL test is the generic one in tests/test_pubsub_crash.py (redis and sqlite
# have their own, with checks on their storage).
CRASH_TESTED = frozenset({"jetstream", "rabbitmq", "mqtt3"})


def service_url(request: pytest.FixtureRequest, kind: str) -> str:
    """The URL of ``kind``'s server, from its session fixture ("" for brokers without one)."""
    fixture = SERVICE_FIXTURES.get(kind)
    return str(request.getfixturevalue(fixture)) if fixture else ""


# --- the subscriber app ----------------------------------------------------------------------


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    @property
    def event(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value


# An answer: HTTP status and body (a dict is sent as JSON, None as an empty body).
Reply = tuple[int, dict[str, Any] | bytes | None]
Answer = Callable[[Delivery], Reply]


def ok(delivery: Delivery) -> Reply:
    return 200, None


class SubscriberApp:
    """A small HTTP server on a free port: answers GET /dapr/subscribe with ``subscriptions``,
    records every POST and answers it with ``answer`` (which may sleep to play a slow app)."""

    def __init__(
        self,
        subscriptions: list[dict[str, Any]] | None = None,
        answer: Answer = ok,
        subscribe_status: int = 200,
        port: int | None = None,
    ) -> None:
        self.subscriptions = subscriptions or []
        self.answer = answer
        self.subscribe_status = subscribe_status
        self.port = port or free_port()
        self.deliveries: list[Delivery] = []
        self.subscribe_calls: list[dict[str, str]] = []
        self._lock = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()

    def start(self) -> SubscriberApp:
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with app._lock:
                    app._connections.add(self.connection)

            def finish(self) -> None:
                with app._lock:
                    app._connections.discard(self.connection)
                super().finish()

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _send(self, status: int, body: dict[str, Any] | list[Any] | bytes | None) -> None:
                data = json.dumps(body).encode() if isinstance(body, dict | list) else body or b""
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the sidecar went away mid-call (the SIGKILL test)

            def do_GET(self) -> None:
                if self.path != "/dapr/subscribe":
                    self._send(404, None)
                    return
                with app._lock:
                    app.subscribe_calls.append({k.lower(): v for k, v in self.headers.items()})
                self._send(app.subscribe_status, app.subscriptions)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if len(body) < length:
                    return  # the sidecar died mid-request: nothing was delivered
                delivery = Delivery(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with app._lock:
                    app.deliveries.append(delivery)
                    app._lock.notify_all()
                status, reply = app.answer(delivery)
                self._send(status, reply)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop as a process would: the port closes and so do its kept-alive connections."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            for connection in self._connections:
                with suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def received(self, path: str | None = None) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if path is None or d.path == path]

    def wait_for(
        self,
        count: int,
        path: str | None = None,
        timeout: float = 15,
        where: Callable[[Delivery], bool] = bool,
    ) -> list[Delivery]:
        """Wait until ``count`` deliveries (to ``path``, passing ``where``) arrived; return them."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                found = [d for d in self.deliveries if (path is None or d.path == path) and where(d)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{len(found)} of {count} deliveries to {path or 'any path'} after {timeout}s: "
                        f"{[(d.path, d.body[:80]) for d in self.deliveries]}"
                    )
                self._lock.wait(left)


def subscription(
    topic: str, route: str | None = None, pubsub: str = "pubsub", **extra: Any
) -> dict[str, Any]:
    """One entry of the app's GET /dapr/subscribe answer."""
    entry: dict[str, Any] = {"pubsubname": pubsub, "topic": topic, **extra}
    if route is not None:
        entry["route"] = route
    return entry


@contextmanager
def running(
    workdir: Path,
    app: SubscriberApp,
    resources: dict[str, str],
    app_id: str = "subscriber",
    env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
) -> Iterator[SidecarProcess]:
    """A sidecar for ``app`` that is ready (healthz 204: its subscriptions have started)."""
    sidecar = start_sidecar(
        workdir,
        app_id=app_id,
        resources=resources,
        extra_args=["--app-port", str(app.port), *(extra_args or [])],
        env=env,
        wait_path="/v1.0/healthz",
    )
    try:
        yield sidecar
    finally:
        sidecar.stop()

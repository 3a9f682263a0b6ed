"""The shared message brokers the tests use (NATS JetStream, RabbitMQ, Mosquitto): where they are,
how to tell they are up, and how a test run keeps to its own names and removes them afterwards.

These servers are shared with whatever else runs on the machine, so every test run puts its own
marker, ``pillion-test-<run>``, in front of each topic (``topicPrefix``) and cleans up at the end:
its JetStream streams, its RabbitMQ vhost (one per run, when rabbitmqctl can make one), and the
persistent MQTT sessions its sidecars created.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from components.base import ComponentContext
from components.metadata import MetadataSchema
from components.pubsub.base import Message

RUN_MARKER = f"pillion-test-{uuid.uuid4().hex[:8]}"
_counter = itertools.count(1)

NATS_URL = "nats://127.0.0.1:4222"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
MQTT_URL = "tcp://127.0.0.1:1883"

HOW_TO_GET = {
    "NATS": "NATS with JetStream is needed for the pubsub.jetstream tests. Install it (Debian/Ubuntu: "
    "`apt-get install nats-server`) and start it with `nats-server -js` (`.ci/run` does both), or "
    "set PILLION_NATS_URL to a server the tests may create streams on.",
    "RabbitMQ": "RabbitMQ is needed for the pubsub.rabbitmq tests. Install it (Debian/Ubuntu: "
    "`apt-get install rabbitmq-server`; `.ci/run` installs and starts it), or set "
    "PILLION_RABBITMQ_URL to a broker (and vhost) the tests may write to.",
    "MQTT": "An MQTT broker is needed for the pubsub.mqtt3 tests. Install Mosquitto 2 (Debian/Ubuntu: "
    "`apt-get install mosquitto`; `.ci/run` installs and starts it), or set PILLION_MQTT_URL to a "
    "broker the tests may use (it must support shared subscriptions).",
}


def topic_prefix(separator: str) -> str:
    """A prefix no other test, and no other run, uses: each broker YAML gets its own."""
    return f"{RUN_MARKER}-{next(_counter)}{separator}"


def unreachable(url: str, default_port: int) -> str:
    """Why nothing answers at ``url`` (empty when a TCP connection works)."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), 3):
            return ""
    except OSError as exc:
        return f"{parts.hostname}:{parts.port or default_port}: {exc}"


# --- NATS ----------------------------------------------------------------------------------------


def delete_streams(url: str) -> None:
    """Delete the JetStream streams whose subjects carry this run's marker."""

    async def sweep() -> None:
        import nats

        client = await nats.connect(url, allow_reconnect=False)
        try:
            manager = client.jetstream()
            for info in await manager.streams_info():
                subjects = info.config.subjects or []
                if info.config.name and any(s.startswith(RUN_MARKER) for s in subjects):
                    await manager.delete_stream(info.config.name)
        finally:
            await client.close()

    asyncio.run(sweep())


# --- RabbitMQ ------------------------------------------------------------------------------------


def _rabbitmqctl(*args: str) -> bool:
    command = shutil.which("rabbitmqctl")
    if command is None:
        return False
    result = subprocess.run([command, "-q", *args], capture_output=True, timeout=60, check=False)
    return result.returncode == 0


@contextmanager
def private_vhost(url: str) -> Iterator[str]:
    """``url`` moved to a vhost of this run's own, deleted afterwards with everything in it. When
    rabbitmqctl cannot manage the broker (a remote one), ``url`` as given: names stay unique."""
    parts = urlsplit(url)
    local = parts.hostname in ("127.0.0.1", "localhost", "::1")
    user = unquote(parts.username or "guest")
    if not (local and _rabbitmqctl("add_vhost", RUN_MARKER)):
        yield url
        return
    try:
        _rabbitmqctl("set_permissions", "-p", RUN_MARKER, user, ".*", ".*", ".*")
        yield urlunsplit((parts.scheme, parts.netloc, "/" + quote(RUN_MARKER, safe=""), "", ""))
    finally:
        _rabbitmqctl("delete_vhost", RUN_MARKER)


# --- MQTT ----------------------------------------------------------------------------------------


def end_mqtt_sessions(url: str, folder: Path) -> None:
    """End the persistent sessions recorded by sidecars under ``folder`` (their slot files)."""
    from components.pubsub.mqtt3 import session_client_ids

    folders = {path.parent for path in folder.rglob("mqtt3-*.session")}
    client_ids = sorted({client_id for data_dir in folders for client_id in session_client_ids(data_dir)})
    if not client_ids:
        return

    async def end_all() -> None:
        import aiomqtt

        parts = urlsplit(url)
        for client_id in client_ids:
            client = aiomqtt.Client(
                parts.hostname or "127.0.0.1",
                parts.port or 1883,
                identifier=client_id,
                clean_session=True,
                username=unquote(parts.username) if parts.username else None,
                password=unquote(parts.password) if parts.password else None,
            )
            async with client:
                pass

    asyncio.run(end_all())


# --- driving a broker component in-process ------------------------------------------------------


class Inbox:
    """A subscription handler that records messages; ``behaviour`` may sleep or raise to play a
    slow or failing app."""

    def __init__(self, behaviour: Callable[[Message], Awaitable[object]] | None = None) -> None:
        self.messages: list[Message] = []
        self.calls = 0
        self.behaviour = behaviour
        self.in_flight = 0
        self.most_in_flight = 0
        self._changed = asyncio.Event()

    async def __call__(self, message: Message) -> None:
        self.calls += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.behaviour is not None:
                await self.behaviour(message)
            self.messages.append(message)
        finally:
            self.in_flight -= 1
            self._changed.set()

    @property
    def payloads(self) -> list[bytes]:
        return [m.data for m in self.messages]

    async def wait_for(self, count: int, within: float = 10) -> None:
        async def enough() -> None:
            while len(self.messages) < count:
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(enough(), within)
        except TimeoutError:
            raise AssertionError(f"got {len(self.messages)} of {count} messages within {within}s") from None


async def wait_until(condition: Callable[[], bool | Awaitable[bool]], within: float = 10) -> None:
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def context(tmp_path: Path, app_id: str = "app", name: str = "pubsub") -> ComponentContext:
    return ComponentContext(name, app_id, tmp_path / "data", tmp_path)


class _BrokerComponent(Protocol):
    schema: ClassVar[MetadataSchema]

    def __init__(self, metadata: Any, context: ComponentContext) -> None: ...
    async def init(self) -> None: ...
    async def close(self) -> None: ...


B = TypeVar("B", bound=_BrokerComponent)


class Brokers(Generic[B]):
    """Builds instances of one broker component, each a simulated sidecar, that share one topic
    prefix (and the connection settings given), and closes every one that was opened."""

    def __init__(
        self,
        component: type[B],
        settings: dict[str, str],
        tmp_path: Path,
        *,
        separator: str = ".",
        place: str = "",
    ) -> None:
        self.component = component
        self.tmp_path = tmp_path
        self.prefix = topic_prefix(separator)
        self.settings = {"topicPrefix": self.prefix, **settings}
        self.place = place
        self.opened: list[B] = []

    def build(self, app_id: str = "app", *, place: str | None = None, **metadata: str) -> B:
        """An instance not yet started; ``place`` names its own data folder (its sidecar's)."""
        folder = self.tmp_path / (self.place if place is None else place)
        raw = {**self.settings, **metadata}
        return self.component(self.component.schema.parse(raw), context(folder, app_id))

    async def open(self, app_id: str = "app", *, place: str | None = None, **metadata: str) -> B:
        pubsub = self.build(app_id, place=place, **metadata)
        await pubsub.init()
        self.opened.append(pubsub)
        return pubsub

    async def close(self) -> None:
        for pubsub in self.opened:
            await pubsub.close()

"""``pubsub.mqtt3``: MQTT 3.1.1 through aiomqtt, QoS 1 (see docs/pubsub-brokers.md for the limits).

A topic is an MQTT topic (``topicPrefix`` + topic; ``+`` and ``#`` work in subscriptions). The
sidecars of one consumer group (``consumerID``, by default the app id) share each topic through a
shared subscription, ``$share/<group>/<topic>``, so they compete for messages and every group gets
each one. Payloads travel unchanged, as Dapr's component sends them; MQTT 3.1.1 has no headers, so
message metadata does not travel.

At-least-once:

* Each subscription is its own MQTT session with a client id that stays the same across restarts
  of the same sidecar (the app's group, a hash of host, data folder, component and a slot number
  leased with a lock file, and a hash of the topic) and ``cleanSession`` false, so the broker keeps
  the subscription and queues messages while the sidecar is down.
* PUBACK is sent only after the handler returned (paho-mqtt's manual acknowledgement; aiomqtt does
  not expose it yet, aiomqtt#345). A message not acknowledged when the connection ends is sent
  again by the broker when the same session reconnects.
* MQTT 3.1.1 cannot reject a message, so a handler that raised is run again by the sidecar itself
  after a pause, while the broker still counts the message as unacknowledged.
* A broker that restarts may come back without the shared subscriptions of its persistent sessions
  (Mosquitto 2.0 restores only plain ones) until each subscriber has subscribed again, and drops
  what is published meanwhile. So the publishing connection speaks MQTT 5 where the broker does,
  whose PUBACK says "no matching subscribers": for ``_RESUBSCRIBE_GRACE`` after the publisher had
  to reconnect, a publish to a topic that had subscribers before and has none now fails (500, try
  again) instead of being acknowledged and lost. Otherwise a topic without subscribers takes
  publishes as Dapr's component does. Subscriptions stay MQTT 3.1.1, as Dapr's.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import re
import socket
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TextIO, cast
from urllib.parse import unquote, urlsplit

from components.base import ComponentContext
from components.metadata import FieldType, MetadataError, MetadataField, MetadataSchema
from components.pubsub.base import Handler, Message, PubSubFeature, SubscribeOptions
from components.pubsub.handlers import CONCURRENCY_FIELD, wait_for_handlers
from components.pubsub.naming import expand_consumer_id, short_hash

if TYPE_CHECKING:
    import aiomqtt

log = logging.getLogger("pillion.pubsub.mqtt3")

# A message whose handler raised is handed to it again after this pause (MQTT 3.1.1 has no way to
# give a message back to the broker short of dropping the connection).
_RETRY_AFTER = 1.0
_MAX_RECONNECT_WAIT = 10.0
# After the publisher reconnected, how long a topic that lost its subscribers may be a broker that
# restarted and is waiting for them to subscribe again (they reconnect within seconds).
_RESUBSCRIBE_GRACE = 30.0
# PUBACK/PUBREC reason code of MQTT 5: the broker had nobody to send the message to.
_NO_MATCHING_SUBSCRIBERS = 16
# CONNACK answers of a broker that does not speak MQTT 5 (3.1.1's code, then 5's).
_UNSUPPORTED_PROTOCOL = frozenset({1, 132})
_SCHEMES = {"tcp": False, "mqtt": False, "ssl": True, "tls": True, "mqtts": True}
_GROUP_UNSAFE = re.compile(r"[/+#\s]+")

_SCHEMA = MetadataSchema(
    (
        MetadataField(
            "url",
            required=True,
            sensitive=True,
            description="Broker address: `tcp://[user[:password]@]host[:port]`, or `ssl://` for TLS.",
        ),
        MetadataField(
            "consumerID",
            default="",
            description="Consumer group (default: the app id), used as the shared-subscription group "
            "and at the start of each client id; `{appID}`, `{uuid}`, `{podName}`, `{namespace}` "
            "are replaced.",
        ),
        MetadataField(
            "qos",
            FieldType.INTEGER,
            default=1,
            description="QoS of published messages: 1 (default), 2, or 0 (fire and forget: lost if "
            "the connection drops). Subscriptions always use QoS 1.",
        ),
        MetadataField(
            "retain",
            FieldType.BOOLEAN,
            default=False,
            description="Publish retained messages (a new subscriber first gets the topic's last one).",
        ),
        MetadataField(
            "cleanSession",
            FieldType.BOOLEAN,
            default=False,
            description="true drops the broker's session at each connect: messages published while "
            "a sidecar is down, or unacknowledged when it stopped, are lost.",
        ),
        MetadataField(
            "topicPrefix",
            default="",
            description="Pillion: put in front of every topic (e.g. `staging/`), so several "
            "environments can share one broker. Apps never see it.",
        ),
        CONCURRENCY_FIELD,
        MetadataField("keepAlive", FieldType.DURATION, default=30.0, description="MQTT keep-alive interval."),
        MetadataField(
            "caCert", default="", description="PEM CA certificate(s) that sign the broker's certificate."
        ),
        MetadataField("clientCert", default="", description="PEM client certificate, with `clientKey`."),
        MetadataField("clientKey", default="", sensitive=True, description="PEM key of `clientCert`."),
    )
)


class MQTTPubSub:
    schema: ClassVar[MetadataSchema] = _SCHEMA
    features: ClassVar[frozenset[PubSubFeature]] = frozenset({PubSubFeature.SUBSCRIBE_WILDCARDS})

    def __init__(self, metadata: dict[str, Any], context: ComponentContext) -> None:
        parts = urlsplit(metadata["url"])
        if parts.scheme not in _SCHEMES or not parts.hostname:
            raise MetadataError("url", "must look like tcp://host:1883 or ssl://host:8883")
        if metadata["qos"] not in (0, 1, 2):
            raise MetadataError("qos", "must be 0, 1 or 2")
        if metadata["concurrency"] < 1:
            raise MetadataError("concurrency", "must be at least 1")
        if bool(metadata["clientCert"]) != bool(metadata["clientKey"]):
            raise MetadataError("clientCert", "clientCert and clientKey go together")
        self.name = context.name
        self.tls = _SCHEMES[parts.scheme]
        self.host: str = parts.hostname
        self.port = parts.port or (8883 if self.tls else 1883)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.group = expand_consumer_id(metadata["consumerID"], context.app_id)
        self.share_group = _GROUP_UNSAFE.sub("_", self.group)
        self.qos: int = metadata["qos"]
        self.retain: bool = metadata["retain"]
        self.clean_session: bool = metadata["cleanSession"]
        self.prefix: str = metadata["topicPrefix"]
        self.keepalive = max(1, round(metadata["keepAlive"]))
        self._pem = (metadata["caCert"], metadata["clientCert"], metadata["clientKey"])
        self._ssl: ssl.SSLContext | None = None
        self._sessions_dir = context.data_dir
        self._lease: TextIO | None = None
        self.instance = ""
        self._publisher: aiomqtt.Client | None = None
        self._publisher_lock = asyncio.Lock()
        # MQTT 5 for publishing until the broker refuses it.
        self._publish_v5 = True
        # PUBACK reason codes by message id, for the publishes waiting on them.
        self._acks: dict[int, asyncio.Future[int]] = {}
        # Topics whose last publish reached a subscriber, and when the publisher last came back.
        self._had_subscribers: set[str] = set()
        self._reconnected_at: float | None = None
        self._subscriptions: set[SharedSubscription] = set()
        if self.qos == 0:
            log.warning(
                "pubsub %s: qos 0 publishes without waiting for the broker; messages can be lost", self.name
            )
        if self.clean_session:
            log.warning(
                "pubsub %s: cleanSession is true; messages published while a sidecar is down, or in "
                "flight when it stops, are lost",
                self.name,
            )

    def where(self) -> str:
        return f"{self.host}:{self.port}"

    # --- life cycle -------------------------------------------------------------------------

    async def init(self) -> None:
        if self.tls:
            self._ssl = await asyncio.to_thread(self._ssl_context)
        lease, slot = await asyncio.to_thread(self._lease_slot)
        self._lease = lease
        self.instance = short_hash(socket.gethostname(), str(self._sessions_dir), self.name, str(slot))
        try:
            self._publisher = await self._connect_publisher()
        except BaseException as exc:
            # Also when cancelled: the slot is free again for the next attempt.
            lease.close()
            self._lease = None
            if not isinstance(exc, Exception):
                raise
            raise RuntimeError(f"cannot reach the MQTT broker at {self.where()}: {exc}") from None

    def _ssl_context(self) -> ssl.SSLContext:
        ca, cert, key = self._pem
        context = ssl.create_default_context(cadata=ca or None)
        if cert:
            # ssl can load a certificate chain only from files; they live just long enough for that.
            with tempfile.TemporaryDirectory() as folder:
                cert_file, key_file = Path(folder, "cert.pem"), Path(folder, "key.pem")
                cert_file.write_text(cert)
                key_file.touch(mode=0o600)
                key_file.write_text(key)
                context.load_cert_chain(cert_file, key_file)
        return context

    def _lease_slot(self) -> tuple[TextIO, int]:
        """Take the lowest session slot no running sidecar of this data folder holds. A sidecar
        restarted in the same place gets the same slot, hence the same client ids, and so the
        messages its sessions kept."""
        self._sessions_dir.mkdir(parents=True, exist_ok=True)
        slot = 0
        while True:
            path = self._sessions_dir / f"mqtt3-{self.name}-{slot}.session"
            handle = path.open("a+", encoding="utf-8")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                slot += 1
                continue
            return handle, slot

    def _record_session(self, client_id: str) -> None:
        """Note the client id in the slot file: these are the broker sessions to remove (connect
        with a clean session) when this sidecar is retired for good."""
        if self._lease is None:
            return
        self._lease.seek(0)
        known = set(self._lease.read().split())
        if client_id not in known:
            self._lease.write(client_id + "\n")
            self._lease.flush()

    async def _connect_publisher(self) -> aiomqtt.Client:
        """The publishing connection: MQTT 5 (for PUBACK's reason code) unless the broker refuses it."""
        from aiomqtt import MqttCodeError
        from paho.mqtt.reasoncodes import ReasonCode

        if self._publish_v5:
            try:
                client = await self._connect(None, clean_session=None, version5=True)
            except MqttCodeError as exc:
                refusal = exc.rc.value if isinstance(exc.rc, ReasonCode) else exc.rc
                if refusal not in _UNSUPPORTED_PROTOCOL:
                    raise
                log.info("pubsub %s: the broker does not speak MQTT 5; publishing over 3.1.1", self.name)
                self._publish_v5 = False
            else:
                self._watch_acks(client)
                return client
        client = await self._connect(None, clean_session=True)
        self._watch_acks(client)
        return client

    def _watch_acks(self, client: aiomqtt.Client) -> None:
        """Hand each PUBACK's reason code to the publish waiting for it, then to aiomqtt."""
        paho = client._client
        # aiomqtt's own callback (paho's version 2 signature), which releases aiomqtt's waiters.
        forward = cast("Callable[..., None] | None", paho.on_publish)

        def on_publish(paho_client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
            # Nothing runs between a publish and its waiter being noted, so none comes early; one
            # that comes after its publish gave up is dropped.
            waiting = self._acks.pop(mid, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(int(getattr(reason_code, "value", 0)))
            if forward is not None:
                forward(paho_client, userdata, mid, reason_code, properties)

        paho.on_publish = on_publish

    async def _connect(
        self, client_id: str | None, *, clean_session: bool | None, version5: bool = False
    ) -> aiomqtt.Client:
        import aiomqtt

        client = aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=client_id,
            clean_session=clean_session,
            protocol=aiomqtt.ProtocolVersion.V5 if version5 else aiomqtt.ProtocolVersion.V311,
            keepalive=self.keepalive,
            tls_context=self._ssl,
            timeout=10,
        )
        # Before connecting: a persistent session starts sending what it kept at once.
        # aiomqtt has no public switch for this yet (aiomqtt#345); paho-mqtt 2 has.
        client._client.manual_ack_set(True)
        _register_writes_safely(client)
        try:
            await client.__aenter__()
        except BaseException:
            # aiomqtt keeps the socket and its housekeeping task of a connect that got no CONNACK
            # in time, or was cancelled: drop both, or they outlive the attempt.
            client._client._reset_sockets()
            raise
        return client

    async def close(self) -> None:
        subscriptions, self._subscriptions = list(self._subscriptions), set()
        await asyncio.gather(*(s.close() for s in subscriptions))
        if self._publisher is not None:
            await _disconnect(self._publisher)
            self._publisher = None
        if self._lease is not None:
            await asyncio.to_thread(self._lease.close)
            self._lease = None

    async def ping(self) -> None:
        """Raise unless the publishing connection is up (reconnecting it when it dropped)."""
        client = self._publisher
        if client is None or not client._client.is_connected():
            try:
                await self._reconnect_publisher(client)
            except Exception as exc:
                raise RuntimeError(f"cannot reach the MQTT broker at {self.where()}: {exc}") from None

    # --- publish and subscribe --------------------------------------------------------------

    def topic_name(self, topic: str) -> str:
        return self.prefix + topic

    async def publish(self, topic: str, data: bytes, metadata: dict[str, str]) -> None:
        from aiomqtt import MqttError

        try:
            client = self._publisher
            if client is None:
                client = await self._reconnect_publisher()
            try:
                await self._publish_on(client, topic, data)
            except MqttError:
                client = await self._reconnect_publisher(client)
                await self._publish_on(client, topic, data)
        except MqttError as exc:
            raise RuntimeError(f"cannot reach the MQTT broker at {self.where()}: {exc}") from None

    async def _publish_on(self, client: aiomqtt.Client, topic: str, data: bytes) -> None:
        """Return after PUBACK (QoS 1) or PUBCOMP (QoS 2): the broker has the message. A lost
        connection fails the publish at once; aiomqtt would wait out its timeout for the ack."""
        from aiomqtt import MqttCodeError, MqttError
        from paho.mqtt.client import MQTT_ERR_SUCCESS

        name = self.topic_name(topic)
        info = client._client.publish(name, data, self.qos, self.retain)
        if info.rc != MQTT_ERR_SUCCESS:
            raise MqttCodeError(info.rc, "could not publish the message")
        if self.qos == 0:
            return
        acked: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._acks[info.mid] = acked
        lost = asyncio.shield(client._disconnected)
        try:
            async with asyncio.timeout(client.timeout):
                waiting: set[asyncio.Future[Any]] = {acked, lost}
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            raise MqttError("the broker did not acknowledge the message in time") from None
        finally:
            lost.cancel()
            self._acks.pop(info.mid, None)
        if acked not in done:
            raise MqttError("the connection to the broker was lost before it acknowledged the message")
        self._check_reached(name, acked.result())

    def _check_reached(self, name: str, code: int) -> None:
        """Refuse a publish that a restarted broker dropped for want of the subscribers it had."""
        if code != _NO_MATCHING_SUBSCRIBERS:
            self._had_subscribers.add(name)
            return
        since = self._reconnected_at
        recently_back = since is not None and time.monotonic() - since < _RESUBSCRIBE_GRACE
        if name in self._had_subscribers and recently_back:
            raise RuntimeError(
                f"the MQTT broker at {self.where()} came back without a subscriber for topic "
                f"{name!r} (they are subscribing again); the message was not kept: publish it again"
            )
        # A topic nobody subscribes to takes publishes, as with Dapr's component.
        self._had_subscribers.discard(name)

    async def _reconnect_publisher(self, broken: aiomqtt.Client | None = None) -> aiomqtt.Client:
        async with self._publisher_lock:
            if self._publisher is not None and self._publisher is not broken:
                return self._publisher  # another publish reconnected meanwhile
            if broken is not None:
                await _disconnect(broken)
            self._publisher = None
            self._publisher = await self._connect_publisher()
            # The broker may have restarted: topics can be without their subscribers a while.
            self._reconnected_at = time.monotonic()
            return self._publisher

    async def subscribe(self, topic: str, handler: Handler, options: SubscribeOptions) -> SharedSubscription:
        if self._lease is None:
            raise RuntimeError(f"pubsub {self.name} is not connected")
        client_id = f"{self.group}-{self.instance}-{short_hash(topic, length=6)}"
        await asyncio.to_thread(self._record_session, client_id)
        subscription = SharedSubscription(self, topic, client_id, handler, max(1, options.concurrency))
        await subscription.start()
        self._subscriptions.add(subscription)
        return subscription

    def forget(self, subscription: SharedSubscription) -> None:
        self._subscriptions.discard(subscription)


class SharedSubscription:
    """One MQTT session subscribed to ``$share/<group>/<topic>``, reconnecting when it drops."""

    def __init__(self, owner: MQTTPubSub, topic: str, client_id: str, handler: Handler, slots: int) -> None:
        self.owner = owner
        self.topic = topic
        self.client_id = client_id
        self.filter = f"$share/{owner.share_group}/{owner.topic_name(topic)}"
        self._handler = handler
        self._slots = asyncio.Semaphore(slots)
        self._handlers: set[asyncio.Task[None]] = set()
        self._client: aiomqtt.Client | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        """Connect and subscribe once (raising if that fails), then keep reading in the background."""
        client = await self._session()
        self._reader = asyncio.create_task(self._read(client), name=f"mqtt-{self.topic}")

    async def _session(self) -> aiomqtt.Client:
        client = await self.owner._connect(self.client_id, clean_session=self.owner.clean_session)
        try:
            await client.subscribe(self.filter, qos=1)
        except BaseException:
            # Also when cancelled by close(): a connection nobody tracks would never be closed.
            await asyncio.shield(_disconnect(client))
            raise
        self._client = client
        return client

    async def close(self) -> None:
        """Stop reading, let the handlers in flight finish and acknowledge, then disconnect. The
        session stays with the broker, so messages published meanwhile wait for the next start."""
        if self._closing:
            return
        self._closing = True
        self.owner.forget(self)
        if self._reader is not None:
            # Messages read but not yet handed to a handler stay unacknowledged: they come back.
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        try:
            await wait_for_handlers(self._handlers)
        finally:
            if self._client is not None:
                await _disconnect(self._client)
                self._client = None

    async def _read(self, client: aiomqtt.Client) -> None:
        from aiomqtt import MqttError

        failures = 0
        while True:
            try:
                async for incoming in client.messages:
                    await self._slots.acquire()
                    task = asyncio.create_task(self._handle(incoming, client))
                    self._handlers.add(task)
                    task.add_done_callback(self._handlers.discard)
                    failures = 0
            except MqttError as exc:
                log.warning(
                    "pubsub %s: lost the MQTT session for %r (%s); reconnecting; messages in flight will "
                    "be delivered again",
                    self.owner.name,
                    self.topic,
                    exc,
                )
            self._client = None
            await _disconnect(client)
            while True:
                await asyncio.sleep(min(_MAX_RECONNECT_WAIT, 0.2 * 2**failures))
                failures += 1
                try:
                    client = await self._session()
                    break
                except Exception as exc:
                    if failures == 1:
                        log.warning(
                            "pubsub %s: reconnecting for %r failed: %s", self.owner.name, self.topic, exc
                        )

    async def _handle(self, incoming: aiomqtt.Message, client: aiomqtt.Client) -> None:
        owner = self.owner
        topic = incoming.topic.value
        if owner.prefix and topic.startswith(owner.prefix):
            topic = topic[len(owner.prefix) :]
        payload = incoming.payload
        data = payload if isinstance(payload, bytes) else str(payload or "").encode()
        message = Message(topic, data, {}, str(incoming.mid))
        try:
            while True:
                try:
                    await self._handler(message)
                    break
                except Exception as exc:
                    if self._closing:
                        # Unacknowledged, it comes back when this session next connects.
                        return
                    log.warning(
                        "pubsub %s: handling message %s on %r failed (%s); trying again in %gs",
                        owner.name,
                        message.id,
                        topic,
                        exc or type(exc).__name__,
                        _RETRY_AFTER,
                    )
                    await asyncio.sleep(_RETRY_AFTER)
            # Only on the connection it came from: after a reconnect its id may name another message.
            if client is self._client:
                client._client.ack(incoming.mid, incoming.qos)
        finally:
            self._slots.release()


def _register_writes_safely(client: aiomqtt.Client) -> None:
    """aiomqtt asks the loop to watch the socket for writing a moment after paho asks it to;
    if the connection closed in between, the loop is handed a closed descriptor and logs a
    traceback (uvloop: "Bad file descriptor"), and the broken connection goes unnoticed. The
    same, but only while the socket is paho's, and a refusal ends the session."""
    from aiomqtt import MqttError

    loop = asyncio.get_running_loop()
    paho = client._client

    def register(mqttc: Any, userdata: Any, sock: Any) -> None:
        def write() -> None:
            try:
                mqttc.loop_write()
            except Exception as exc:  # a broken pipe: the connection is gone
                if not client._disconnected.done():
                    client._disconnected.set_exception(exc)

        def watch() -> None:
            if mqttc.socket() is not sock:
                return
            try:
                loop.add_writer(sock.fileno(), write)
            except (OSError, RuntimeError) as exc:
                # uvloop already dropped its watch on this descriptor (the connection broke), so
                # paho would not hear of it until the keep-alive ran out: end the session now.
                if not client._disconnected.done():
                    client._disconnected.set_exception(MqttError(f"connection lost ({exc})"))

        # paho may call this from the thread that connects, hence the thread-safe hop.
        loop.call_soon_threadsafe(watch)

    paho.on_socket_register_write = register


async def _disconnect(client: aiomqtt.Client) -> None:
    with contextlib.suppress(Exception):
        await client.__aexit__(None, None, None)
    # A connection that broke under paho's feet may still hold its socket.
    with contextlib.suppress(Exception):
        client._client._reset_sockets()
    # How the connection ended is known by now; unread, asyncio would log it with a traceback.
    ended = client._disconnected
    if ended.done() and not ended.cancelled():
        ended.exception()


def session_client_ids(data_dir: Path) -> list[str]:
    """Client ids of the MQTT sessions that sidecars using ``data_dir`` created (from their slot
    files): the sessions to end when those sidecars are retired."""
    ids: list[str] = []
    for path in sorted(data_dir.glob("mqtt3-*.session")):
        ids += path.read_text(encoding="utf-8").split()
    return ids

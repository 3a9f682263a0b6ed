"""``pubsub.rabbitmq``: RabbitMQ through aio-pika, named as Dapr names things (see docs/pubsub-brokers.md).

A topic is a durable exchange (``topicPrefix`` + topic, of kind ``exchangeKind``); each consumer
group (``consumerID``, by default the app id) has one queue per topic, ``<consumerID>-<exchange>``,
bound to it. So sidecars of one app compete for the queue's messages and every app gets each
message. Dapr sidecars and Pillion sidecars with the same settings share exchanges and queues.

At-least-once, and where the defaults differ from Dapr's (whose queues are by default neither
durable nor kept when unused, and whose messages are transient):

* Queues are durable and kept when their consumers leave; messages are published persistent and
  with publisher confirms, so ``publish`` returns once RabbitMQ holds the message.
* A message is acknowledged only after its handler returned. The channel's prefetch is the
  subscription's concurrency (unless ``prefetchCount`` says otherwise), so RabbitMQ never hands a
  sidecar more than it is handling. A sidecar that dies gets its unacknowledged messages requeued
  by RabbitMQ at once.
* A handler that raised gets its message requeued after a short pause, or sent to the dead-letter
  queue when ``requeueInFailure`` is false and ``enableDeadLetter`` is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, urlsplit, urlunsplit

from components.base import ComponentContext
from components.metadata import FieldType, MetadataError, MetadataField, MetadataSchema
from components.pubsub.base import Handler, Message, PubSubFeature, SubscribeOptions, message_ttl
from components.pubsub.handlers import CONCURRENCY_FIELD, wait_for_handlers
from components.pubsub.naming import expand_consumer_id

if TYPE_CHECKING:
    from aio_pika.abc import (
        AbstractChannel,
        AbstractExchange,
        AbstractIncomingMessage,
        AbstractQueue,
        AbstractRobustConnection,
    )

log = logging.getLogger("pillion.pubsub.rabbitmq")


class _ExpectedClose(logging.Filter):
    """aiormq logs a broker closing the connection (a restart) with a traceback; the robust
    connection reconnects by itself, so the line stays and the traceback goes."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiormq.exceptions import ConnectionClosed

        if record.exc_info and isinstance(record.exc_info[1], ConnectionClosed):
            record.exc_info = None
            record.exc_text = None
        return True


logging.getLogger("aiormq.connection").addFilter(_ExpectedClose())

# A message whose handler raised goes back to the queue after this pause: requeued at once, it
# would come straight back (RabbitMQ requeues at the head) and spin while the cause lasts.
_REQUEUE_AFTER = 1.0
_KINDS = ("fanout", "topic", "direct", "headers")

_SCHEMA = MetadataSchema(
    (
        MetadataField(
            "connectionString",
            default="",
            sensitive=True,
            aliases=("host",),
            description="AMQP URL, e.g. `amqp://user:pass@localhost:5672/vhost` (or `amqps://`). "
            "Alternatively give `protocol`, `hostname`, `username` and `password`.",
        ),
        MetadataField("protocol", default="amqp", choices=("amqp", "amqps"), description="With `hostname`."),
        MetadataField("hostname", default="", description="Broker host (and `:port`), instead of a URL."),
        MetadataField("username", default="", description="With `hostname`."),
        MetadataField("password", default="", sensitive=True, description="With `hostname`."),
        MetadataField(
            "consumerID",
            default="",
            description="Consumer group: queues are named `<consumerID>-<topic>` (default: the app "
            "id); `{appID}`, `{uuid}`, `{podName}`, `{namespace}` are replaced.",
        ),
        MetadataField(
            "topicPrefix",
            default="",
            description="Pillion: put in front of every topic to make its exchange name, so several "
            "environments can share one vhost. Apps never see it.",
        ),
        MetadataField(
            "durable",
            FieldType.BOOLEAN,
            default=True,
            description="Durable queues (Dapr's default is false: a broker restart empties them).",
        ),
        MetadataField(
            "deletedWhenUnused",
            FieldType.BOOLEAN,
            default=False,
            description="Auto-delete queues when their last consumer leaves (Dapr's default is true: "
            "messages published while every sidecar of the app is down are lost).",
        ),
        MetadataField(
            "autoAck",
            FieldType.BOOLEAN,
            default=False,
            description="Refused when true: RabbitMQ would drop a message as soon as it was sent, "
            "before the app had it.",
        ),
        MetadataField(
            "deliveryMode",
            FieldType.INTEGER,
            default=2,
            description="2: persistent messages (default; Dapr's is 0, transient); other values: "
            "transient, lost when RabbitMQ restarts.",
        ),
        MetadataField(
            "requeueInFailure",
            FieldType.BOOLEAN,
            default=True,
            description="When the sidecar could not hand a message over, put it back in the queue "
            "(default); false sends it to the dead-letter queue, so it needs `enableDeadLetter`.",
        ),
        MetadataField(
            "prefetchCount",
            FieldType.INTEGER,
            default=0,
            description="Unacknowledged messages RabbitMQ sends one subscription at once (0: the "
            "subscription's concurrency). Extra ones wait in the sidecar, unacknowledged.",
        ),
        MetadataField(
            "concurrencyMode",
            default="parallel",
            choices=("parallel", "single"),
            description="`single` handles one message at a time (in order) unless a subscription "
            "sets its own `concurrency`.",
        ),
        CONCURRENCY_FIELD,
        MetadataField(
            "enableDeadLetter",
            FieldType.BOOLEAN,
            default=False,
            description="Give each queue a dead-letter exchange `dlx-<queue>` and queue `dlq-<queue>`, "
            "which receive messages rejected, expired or pushed out by `maxLen`.",
        ),
        MetadataField(
            "maxLen",
            FieldType.INTEGER,
            default=0,
            description="Most messages in a queue; beyond it the oldest are dropped (or dead-lettered).",
        ),
        MetadataField(
            "maxLenBytes", FieldType.INTEGER, default=0, description="Most bytes in a queue, as `maxLen`."
        ),
        MetadataField(
            "exchangeKind",
            default="fanout",
            choices=_KINDS,
            description="Exchange kind; with `topic` or `direct`, publish with `metadata.routingKey` "
            "and subscribe with `routingKey` subscription metadata (comma-separated).",
        ),
        MetadataField(
            "ttlInSeconds",
            FieldType.INTEGER,
            default=0,
            description="Default time to live of published messages (a message's own ttl wins).",
        ),
        MetadataField(
            "publisherConfirm",
            FieldType.BOOLEAN,
            default=True,
            description="Always on in Pillion: `publish` returns once RabbitMQ confirmed the message.",
        ),
        MetadataField(
            "reconnectWait",
            FieldType.DURATION,
            default=3.0,
            description="Pause between reconnection attempts after the connection was lost.",
        ),
        MetadataField("heartBeat", FieldType.DURATION, default=10.0, description="AMQP heartbeat interval."),
        MetadataField(
            "clientName",
            default="",
            description="Connection name shown by RabbitMQ (default: `pillion-<appID>`).",
        ),
        MetadataField(
            "saslExternal",
            FieldType.BOOLEAN,
            default=False,
            description="EXTERNAL (certificate) authentication: not supported yet; refused when true.",
        ),
        MetadataField(
            "caCert",
            default="",
            description="TLS client settings: not supported yet; refused when set (use `amqps://` with "
            "a server certificate the system trusts).",
        ),
        MetadataField("clientCert", default="", description="See `caCert`."),
        MetadataField("clientKey", default="", sensitive=True, description="See `caCert`."),
    )
)


def _connection_url(metadata: dict[str, Any]) -> str:
    url: str = metadata["connectionString"]
    if not url:
        if not metadata["hostname"]:
            raise MetadataError("connectionString", "is required (or give hostname)")
        auth = ""
        if metadata["username"]:
            auth = quote(metadata["username"], safe="")
            if metadata["password"]:
                auth += ":" + quote(metadata["password"], safe="")
            auth += "@"
        url = f"{metadata['protocol']}://{auth}{metadata['hostname']}"
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps"):
        raise MetadataError("connectionString", "must start with amqp:// or amqps://")
    query = "&".join(p for p in (parts.query, f"heartbeat={max(1, round(metadata['heartBeat']))}") if p)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RabbitMQPubSub:
    schema: ClassVar[MetadataSchema] = _SCHEMA
    features: ClassVar[frozenset[PubSubFeature]] = frozenset({PubSubFeature.MESSAGE_TTL})

    def __init__(self, metadata: dict[str, Any], context: ComponentContext) -> None:
        if metadata["autoAck"]:
            raise MetadataError(
                "autoAck",
                "true would let RabbitMQ drop each message before the app had it; Pillion "
                "acknowledges after the app's answer",
            )
        if not metadata["requeueInFailure"] and not metadata["enableDeadLetter"]:
            raise MetadataError(
                "requeueInFailure",
                "false without enableDeadLetter would drop messages the sidecar could not hand over",
            )
        for name in ("saslExternal", "caCert", "clientCert", "clientKey"):
            if metadata[name]:
                raise MetadataError(name, "is not supported yet")
        for name in ("prefetchCount", "maxLen", "maxLenBytes", "ttlInSeconds"):
            if metadata[name] < 0:
                raise MetadataError(name, "must not be negative")
        if metadata["concurrency"] < 1:
            raise MetadataError("concurrency", "must be at least 1")
        self.name = context.name
        self.url = _connection_url(metadata)
        self.group = expand_consumer_id(metadata["consumerID"], context.app_id)
        self.client_name = expand_consumer_id(metadata["clientName"], "") or f"pillion-{context.app_id}"
        self.prefix: str = metadata["topicPrefix"]
        self.kind: str = metadata["exchangeKind"]
        self.durable: bool = metadata["durable"]
        self.auto_delete: bool = metadata["deletedWhenUnused"]
        self.persistent = metadata["deliveryMode"] == 2
        self.requeue_in_failure: bool = metadata["requeueInFailure"]
        self.dead_letter: bool = metadata["enableDeadLetter"]
        self.prefetch: int = metadata["prefetchCount"]
        self.single = metadata["concurrencyMode"] == "single"
        self.default_ttl: int = metadata["ttlInSeconds"]
        self.reconnect_wait: float = metadata["reconnectWait"]
        self.queue_arguments: dict[str, Any] = {}
        if metadata["maxLen"]:
            self.queue_arguments["x-max-length"] = metadata["maxLen"]
        if metadata["maxLenBytes"]:
            self.queue_arguments["x-max-length-bytes"] = metadata["maxLenBytes"]
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._subscriptions: set[QueueSubscription] = set()

    def where(self) -> str:
        parts = urlsplit(self.url)
        return (
            f"{parts.hostname}:{parts.port or (5671 if parts.scheme == 'amqps' else 5672)}{parts.path or '/'}"
        )

    # --- life cycle -------------------------------------------------------------------------

    async def init(self) -> None:
        from aio_pika import RobustConnection
        from aio_pika.connection import make_url
        from aiormq.exceptions import AMQPError

        # Made here rather than by aio_pika.connect_robust so that a connect that fails or is
        # cancelled half-way can be closed: the robust connection's reconnect task takes a
        # cancellation for a lost connection and would otherwise keep dialling for ever.
        connection = RobustConnection(
            make_url(self.url, reconnect_interval=self.reconnect_wait),
            client_properties={"connection_name": self.client_name},
            reconnect_interval=self.reconnect_wait,
        )
        try:
            await connection.connect(timeout=10)
            self._publisher = await connection.channel(publisher_confirms=True)
        except BaseException as exc:
            await asyncio.shield(connection.close())
            if isinstance(exc, AMQPError | OSError | TimeoutError):
                raise RuntimeError(
                    f"cannot reach RabbitMQ at {self.where()}: {exc or type(exc).__name__}"
                ) from None
            raise
        self._connection = connection

    async def close(self) -> None:
        subscriptions, self._subscriptions = list(self._subscriptions), set()
        await asyncio.gather(*(s.close() for s in subscriptions))
        if self._connection is not None:
            await self._connection.close()
        self._connection = self._publisher = None
        self._exchanges.clear()

    async def ping(self) -> None:
        if self._connection is None or self._connection.is_closed:
            raise RuntimeError(f"pubsub {self.name} is not connected to RabbitMQ")

    def _open(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise RuntimeError(f"pubsub {self.name} is not connected")
        return self._connection

    # --- names and declarations ----------------------------------------------------------------

    def exchange_name(self, topic: str) -> str:
        return self.prefix + topic

    def queue_name(self, topic: str) -> str:
        return f"{self.group}-{self.exchange_name(topic)}"

    async def _exchange(self, channel: AbstractChannel, name: str, kind: str) -> AbstractExchange:
        from aio_pika import ExchangeType

        return await channel.declare_exchange(name, ExchangeType(kind), durable=True)

    async def _publish_exchange(self, topic: str) -> AbstractExchange:
        name = self.exchange_name(topic)
        exchange = self._exchanges.get(name)
        if exchange is None:
            if self._publisher is None:
                raise RuntimeError(f"pubsub {self.name} is not connected")
            exchange = await self._exchange(self._publisher, name, self.kind)
            self._exchanges[name] = exchange
        return exchange

    # --- publish and subscribe --------------------------------------------------------------

    async def publish(self, topic: str, data: bytes, metadata: dict[str, str]) -> None:
        from aio_pika import DeliveryMode
        from aio_pika import Message as AMQPMessage
        from aiormq.exceptions import ChannelInvalidStateError

        connection = self._open()
        if not connection.connected.is_set():
            # A robust channel would hold the publish until the connection is back: say at once
            # that the broker is away instead.
            raise RuntimeError(f"not connected to RabbitMQ at {self.where()} (reconnecting)")
        ttl = message_ttl(metadata)
        if ttl is None and self.default_ttl:
            ttl = float(self.default_ttl)
        message = AMQPMessage(
            data,
            headers=dict(metadata) or None,
            delivery_mode=DeliveryMode.PERSISTENT if self.persistent else DeliveryMode.NOT_PERSISTENT,
            # RabbitMQ counts in whole milliseconds; 0 would mean "expire unless taken at once".
            expiration=max(0.001, ttl) if ttl is not None else None,
            message_id=metadata.get("cloudevent.id") or None,
        )
        try:
            exchange = await self._publish_exchange(topic)
            # With publisher confirms this returns once RabbitMQ confirmed, and raises on a nack.
            await exchange.publish(message, routing_key=metadata.get("routingKey", ""))
        except ChannelInvalidStateError:
            # The connection went between the check above and the write; the error's own text
            # is the channel object's repr, which tells the client nothing.
            raise RuntimeError(f"not connected to RabbitMQ at {self.where()} (reconnecting)") from None

    async def subscribe(self, topic: str, handler: Handler, options: SubscribeOptions) -> QueueSubscription:
        from aiormq.exceptions import ChannelPreconditionFailed

        connection = self._open()
        explicit = any(k.lower() == "concurrency" for k in options.metadata)
        slots = max(1, options.concurrency if explicit or not self.single else 1)
        channel = await connection.channel(publisher_confirms=False)
        try:
            await channel.set_qos(prefetch_count=self.prefetch or slots)
            queue = await self._declare(channel, topic, options.metadata.get("routingKey", ""))
        except ChannelPreconditionFailed as exc:
            with contextlib.suppress(Exception):
                await channel.close()
            raise RuntimeError(
                f"queue {self.queue_name(topic)!r} or exchange {self.exchange_name(topic)!r} already exists "
                f"with other settings (durable, deletedWhenUnused, maxLen, enableDeadLetter or "
                f"exchangeKind differ): {exc}"
            ) from None
        subscription = QueueSubscription(self, topic, channel, queue, handler, slots)
        await subscription.start()
        self._subscriptions.add(subscription)
        return subscription

    async def _declare(self, channel: AbstractChannel, topic: str, routing_keys: str) -> AbstractQueue:
        exchange = await self._exchange(channel, self.exchange_name(topic), self.kind)
        name = self.queue_name(topic)
        arguments = dict(self.queue_arguments)
        if self.dead_letter:
            dead_exchange = await self._exchange(channel, f"dlx-{name}", "fanout")
            dead_queue = await channel.declare_queue(
                f"dlq-{name}", durable=True, auto_delete=self.auto_delete, arguments=dict(arguments)
            )
            await dead_queue.bind(dead_exchange)
            arguments["x-dead-letter-exchange"] = dead_exchange.name
        queue = await channel.declare_queue(
            name, durable=self.durable, auto_delete=self.auto_delete, arguments=arguments or None
        )
        for key in routing_keys.split(","):
            await queue.bind(exchange, routing_key=key.strip())
        return queue

    def forget(self, subscription: QueueSubscription) -> None:
        self._subscriptions.discard(subscription)


class QueueSubscription:
    """One consumer of one queue on a channel of its own (so its prefetch is its own)."""

    def __init__(
        self,
        owner: RabbitMQPubSub,
        topic: str,
        channel: AbstractChannel,
        queue: AbstractQueue,
        handler: Handler,
        slots: int,
    ) -> None:
        self.owner = owner
        self.topic = topic
        self._channel = channel
        self._queue = queue
        self._handler = handler
        self._slots = asyncio.Semaphore(slots)
        self._handlers: set[asyncio.Task[Any]] = set()
        self._tag = ""
        self._closing = False

    async def start(self) -> None:
        self._tag = await self._queue.consume(self._on_message, no_ack=False)

    async def close(self) -> None:
        """Stop consuming, let the handlers in flight finish (acknowledging those that succeed)."""
        if self._closing:
            return
        self._closing = True
        self.owner.forget(self)
        with contextlib.suppress(Exception):
            await self._queue.cancel(self._tag)
        try:
            await wait_for_handlers(self._handlers)
        finally:
            # Closing the channel gives back whatever it still held unacknowledged.
            with contextlib.suppress(Exception):
                await self._channel.close()

    async def _on_message(self, incoming: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            async with self._slots:
                if self._closing:
                    await _settle(incoming.nack(requeue=True))
                    return
                await self._handle(incoming)
        finally:
            if task is not None:
                self._handlers.discard(task)

    async def _handle(self, incoming: AbstractIncomingMessage) -> None:
        owner = self.owner
        metadata = {str(k): _text(v) for k, v in (incoming.headers or {}).items()}
        message = Message(
            self.topic, incoming.body, metadata, incoming.message_id or str(incoming.delivery_tag or "")
        )
        try:
            await self._handler(message)
        except asyncio.CancelledError:
            await asyncio.shield(_settle(incoming.nack(requeue=True)))
            raise
        except Exception as exc:
            requeue = owner.requeue_in_failure
            log.warning(
                "pubsub %s: handling message %s on %r failed (%s); %s",
                owner.name,
                message.id,
                self.topic,
                exc or type(exc).__name__,
                "requeueing it" if requeue else "sending it to the dead-letter queue",
            )
            if requeue:
                await asyncio.sleep(_REQUEUE_AFTER)
            await _settle(incoming.nack(requeue=requeue))
            return
        await _settle(incoming.ack())


async def _settle(settling: Any) -> None:
    """Acknowledge or reject; a failure (channel lost) means RabbitMQ requeues it anyway."""
    try:
        await settling
    except Exception as exc:
        log.warning("pubsub rabbitmq: settling a message failed (%s); RabbitMQ will deliver it again", exc)

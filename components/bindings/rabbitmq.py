"""``bindings.rabbitmq``: one RabbitMQ queue, as input (consume) and output (``create`` publishes).

A message is acknowledged once the app accepted it; when the app refused it or could not be
reached it goes back to the queue after a short pause (daprd requeues at once, which spins while
the app is down). Messages are persistent; the request metadata become message headers, and
``ttlInSeconds`` / ``priority`` set the message's expiry and priority.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, urlsplit

from components.base import ComponentContext
from components.bindings.base import (
    INPUT,
    OUTPUT,
    BindingError,
    EventHandler,
    InputEvent,
    InvokeRequest,
    InvokeResponse,
)
from components.metadata import FieldType, MetadataError, MetadataField, MetadataSchema

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection

log = logging.getLogger("pillion.bindings.rabbitmq")
_REQUEUE_AFTER = 1.0


class RabbitMQBinding:
    """Input and output binding on one RabbitMQ queue."""

    schema: ClassVar[MetadataSchema] = MetadataSchema(
        (
            MetadataField(
                "host",
                required=True,
                sensitive=True,
                aliases=("connectionString",),
                description="AMQP URL, e.g. `amqp://user:pass@localhost:5672/vhost`.",
            ),
            MetadataField("queueName", required=True, description="The queue read from and published to."),
            MetadataField(
                "durable", FieldType.BOOLEAN, default=False, description="Declare the queue durable."
            ),
            MetadataField(
                "deleteWhenUnused",
                FieldType.BOOLEAN,
                default=False,
                description="Declare the queue auto-delete.",
            ),
            MetadataField(
                "exclusive", FieldType.BOOLEAN, default=False, description="Declare the queue exclusive."
            ),
            MetadataField(
                "ttl",
                FieldType.DURATION,
                aliases=("ttlInSeconds",),
                description="Default time to live of the queue's messages (`x-message-ttl`).",
            ),
            MetadataField(
                "maxPriority",
                FieldType.INTEGER,
                description="Highest message priority (`x-max-priority`, 0-255).",
            ),
            MetadataField(
                "prefetchCount",
                FieldType.INTEGER,
                default=0,
                description="Unacknowledged messages handed to the sidecar at once (0: no limit).",
            ),
            MetadataField(
                "contentType", default="text/plain", description="Content type of published messages."
            ),
            MetadataField(
                "reconnectWaitInSeconds",
                FieldType.DURATION,
                default=5.0,
                description="Pause between reconnection attempts.",
            ),
        )
    )
    directions: ClassVar[frozenset[str]] = frozenset({INPUT, OUTPUT})
    operations: ClassVar[tuple[str, ...]] = ("create",)

    def __init__(self, metadata: dict[str, Any], context: ComponentContext) -> None:
        self._url: str = metadata["host"]
        if urlsplit(self._url).scheme not in ("amqp", "amqps"):
            raise MetadataError("host", "must be an amqp:// or amqps:// URL")
        self._queue_name: str = metadata["queueName"]
        self._durable: bool = metadata["durable"]
        self._auto_delete: bool = metadata["deleteWhenUnused"]
        self._exclusive: bool = metadata["exclusive"]
        self._arguments: dict[str, Any] = {}
        if metadata["ttl"] is not None:
            self._arguments["x-message-ttl"] = int(metadata["ttl"] * 1000)
        if metadata["maxPriority"] is not None:
            if not 0 <= metadata["maxPriority"] <= 255:
                raise MetadataError("maxPriority", "must be between 0 and 255")
            self._arguments["x-max-priority"] = metadata["maxPriority"]
        self._prefetch: int = metadata["prefetchCount"]
        self._content_type: str = metadata["contentType"]
        self._reconnect_wait: float = metadata["reconnectWaitInSeconds"]
        self._client_name = f"pillion-{context.app_id}-{context.name}"
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractChannel | None = None
        self._consumer: tuple[AbstractChannel, AbstractQueue, str] | None = None
        # Messages being handed to the app; stop_reading waits for them.
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def _where(self) -> str:
        parts = urlsplit(self._url)
        return f"{parts.hostname}:{parts.port or 5672}{parts.path or '/'} queue {quote(self._queue_name)}"

    async def init(self) -> None:
        import aio_pika
        from aiormq.exceptions import AMQPError

        try:
            self._connection = await aio_pika.connect_robust(
                self._url,
                client_properties={"connection_name": self._client_name},
                reconnect_interval=self._reconnect_wait,
                timeout=10,
            )
            self._publisher = await self._connection.channel(publisher_confirms=True)
            await self._declare(self._publisher)
        except (AMQPError, OSError, TimeoutError) as exc:
            raise RuntimeError(f"RabbitMQ at {self._where()}: {exc or type(exc).__name__}") from None

    async def _declare(self, channel: AbstractChannel) -> AbstractQueue:
        return await channel.declare_queue(
            self._queue_name,
            durable=self._durable,
            auto_delete=self._auto_delete,
            exclusive=self._exclusive,
            arguments=self._arguments or None,
        )

    async def close(self) -> None:
        await self.stop_reading()
        if self._connection is not None:
            await self._connection.close()
        self._connection = self._publisher = None

    async def ping(self) -> None:
        if self._connection is None or self._connection.is_closed:
            raise RuntimeError("not connected to RabbitMQ")

    async def invoke(self, request: InvokeRequest) -> InvokeResponse:
        import aio_pika
        from aiormq.exceptions import AMQPError

        if self._publisher is None:
            raise BindingError("channel Not initialized")
        metadata = request.metadata
        expiration: float | None = None
        if metadata.get("ttlInSeconds"):
            try:
                expiration = float(int(metadata["ttlInSeconds"]))
            except ValueError:
                raise BindingError(
                    f"failed to get TTL: {metadata['ttlInSeconds']!r} is not an integer"
                ) from None
        priority: int | None = None
        if metadata.get("priority"):
            try:
                priority = int(metadata["priority"])
            except ValueError:
                raise BindingError(f"priority {metadata['priority']!r} is not an integer") from None
        message = aio_pika.Message(
            request.data,
            headers=dict(metadata),
            content_type=metadata.get("contentType") or self._content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            expiration=expiration,
            priority=priority,
        )
        try:
            await self._publisher.default_exchange.publish(message, routing_key=self._queue_name, timeout=10)
        except (AMQPError, OSError, TimeoutError, RuntimeError) as exc:
            raise BindingError(f"failed to publish message: {exc or type(exc).__name__}") from None
        return InvokeResponse()

    async def read(self, handler: EventHandler) -> None:
        if self._connection is None or self._consumer is not None:
            return
        channel = await self._connection.channel()
        if self._prefetch > 0:
            await channel.set_qos(prefetch_count=self._prefetch)
        queue = await self._declare(channel)

        async def on_message(message: AbstractIncomingMessage) -> None:
            self._busy += 1
            self._idle.clear()
            try:
                await self._deliver(handler, message)
            finally:
                self._busy -= 1
                if self._busy == 0:
                    self._idle.set()

        tag = await queue.consume(on_message, no_ack=False)
        self._consumer = (channel, queue, tag)

    async def _deliver(self, handler: EventHandler, message: AbstractIncomingMessage) -> None:
        headers = {
            quote(str(k), safe=""): v for k, v in (message.headers or {}).items() if isinstance(v, str)
        }
        try:
            await handler(InputEvent(message.body, headers))
        except Exception as exc:
            log.warning(
                "binding queue %s: the app did not take a message (%s); it goes back", self._queue_name, exc
            )
            await asyncio.sleep(_REQUEUE_AFTER)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            return
        with contextlib.suppress(Exception):
            await message.ack()

    async def stop_reading(self) -> None:
        if self._consumer is None:
            return
        channel, queue, tag = self._consumer
        self._consumer = None
        with contextlib.suppress(Exception):
            await queue.cancel(tag)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), 5)
        with contextlib.suppress(Exception):
            await channel.close()

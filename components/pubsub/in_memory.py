"""``pubsub.in-memory``: a message bus inside the sidecar process. Nothing survives a restart.

Each subscription has its own queue and ``concurrency`` workers, so a slow subscriber never holds
up a publisher or another topic. A subscription to ``prefix*`` receives every topic that starts
with ``prefix`` (but not ``prefix`` itself), as Dapr's in-memory bus does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from typing import Any, ClassVar

from components.base import ComponentContext
from components.metadata import FieldType, MetadataField, MetadataSchema
from components.pubsub.base import Handler, Message, PubSubFeature, SubscribeOptions

log = logging.getLogger("pillion.pubsub.in-memory")
# A handler that raised is given its message again after this pause (the runtime raises only when
# it could not settle a message, e.g. while shutting down), so a failing handler cannot spin.
_REDELIVER_AFTER = 1.0


class InMemoryPubSub:
    schema: ClassVar[MetadataSchema] = MetadataSchema(
        (
            MetadataField(
                "concurrency",
                FieldType.INTEGER,
                default=10,
                description="Messages handed to the app at once per subscription (1 keeps order).",
            ),
        )
    )
    features: ClassVar[frozenset[PubSubFeature]] = frozenset({PubSubFeature.SUBSCRIBE_WILDCARDS})
    # Its messages live in this process: other processes (--workers) cannot see them.
    process_local: ClassVar[bool] = True

    def __init__(self, metadata: dict[str, Any], context: ComponentContext) -> None:
        self._subscriptions: list[_Subscription] = []
        self._ids = itertools.count(1)
        self._closed = False

    async def init(self) -> None:
        return None

    async def close(self) -> None:
        self._closed = True
        for subscription in list(self._subscriptions):
            await subscription.close()

    async def ping(self) -> None:
        return None

    async def publish(self, topic: str, data: bytes, metadata: dict[str, str]) -> None:
        if self._closed:
            raise RuntimeError("the in-memory pubsub is closed")
        message_id = str(next(self._ids))
        for subscription in self._subscriptions:
            if subscription.wants(topic):
                subscription.put(Message(topic, data, dict(metadata), message_id))

    async def subscribe(self, topic: str, handler: Handler, options: SubscribeOptions) -> _Subscription:
        if self._closed:
            raise RuntimeError("the in-memory pubsub is closed")
        subscription = _Subscription(topic, handler, max(1, options.concurrency), self._subscriptions.remove)
        self._subscriptions.append(subscription)
        return subscription


class _Subscription:
    def __init__(
        self, topic: str, handler: Handler, concurrency: int, forget: Callable[[_Subscription], None]
    ) -> None:
        self._exact = topic
        self._prefix = topic[:-1] if topic.endswith("*") else None
        self._handler = handler
        self._forget = forget
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._busy: set[asyncio.Task[None]] = set()
        self._closing = False
        self._workers = [asyncio.create_task(self._work()) for _ in range(concurrency)]

    def wants(self, topic: str) -> bool:
        if topic == self._exact:
            return True
        return self._prefix is not None and topic.startswith(self._prefix) and topic != self._prefix

    def put(self, message: Message) -> None:
        if not self._closing:
            self._queue.put_nowait(message)

    async def _work(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        while not self._closing:
            message = await self._queue.get()
            self._busy.add(me)
            try:
                await self._handler(message)
            except Exception as exc:
                log.warning("handler failed for message %s on %s: %s", message.id, message.topic, exc)
                asyncio.get_running_loop().call_later(_REDELIVER_AFTER, self.put, message)
            finally:
                self._busy.discard(me)

    async def close(self) -> None:
        """Stop taking messages; a worker in the middle of a message finishes it first."""
        if self._closing:
            return
        self._closing = True
        with contextlib.suppress(ValueError):
            self._forget(self)
        for worker in self._workers:
            if worker not in self._busy:
                worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

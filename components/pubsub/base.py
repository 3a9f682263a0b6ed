"""The pub/sub broker interface, after components-contrib's ``pubsub.PubSub``.

Delivery contract (at-least-once): a broker calls the subscription's handler for each message and
acknowledges (removes) the message only after the handler returned normally. If the handler
raises, or the sidecar dies before it returns, the message stays with the broker and is handed out
again later (on restart, or once the message's processing timeout has passed). Retries with
backoff and dead-lettering are the runtime's job, inside the handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar, Protocol

from components.base import Component


class PubSubFeature(StrEnum):
    SUBSCRIBE_WILDCARDS = "SUBSCRIBE_WILDCARDS"
    # The broker drops a message whose TTL ran out by itself (the runtime then needs no
    # ``expiration`` field in the envelope).
    MESSAGE_TTL = "MESSAGE_TTL"


@dataclass(slots=True)
class Message:
    topic: str
    data: bytes
    metadata: dict[str, str] = field(default_factory=dict)
    # The broker's own id of this message (stream entry id, row id, ...), for logs.
    id: str = ""


Handler = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SubscribeOptions:
    # Handler calls in flight at once for this subscription; 1 gives in-order delivery.
    concurrency: int = 10
    metadata: dict[str, str] = field(default_factory=dict)


class Subscription(Protocol):
    async def close(self) -> None:
        """Stop taking new messages and wait for the handlers in flight to finish."""


class PubSub(Component, Protocol):
    features: ClassVar[frozenset[PubSubFeature]]

    async def publish(self, topic: str, data: bytes, metadata: dict[str, str]) -> None:
        """Return only once the broker holds the message durably (for durable brokers)."""

    async def subscribe(self, topic: str, handler: Handler, options: SubscribeOptions) -> Subscription:
        """Start consuming ``topic`` for this app (consumer group = app id)."""

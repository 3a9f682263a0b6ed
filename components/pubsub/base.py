"""The pub/sub broker interface, after components-contrib's ``pubsub.PubSub``.

Delivery contract (at-least-once): a broker calls the subscription's handler for each message and
acknowledges (removes) the message only after the handler returned normally. If the handler
raises, or the sidecar dies before it returns, the message stays with the broker and is handed out
again later (on restart, or once the message's processing timeout has passed). Retries with
backoff and dead-lettering are the runtime's job, inside the handler.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar, Protocol

from components.base import Component
from components.metadata import parse_duration


class PubSubFeature(StrEnum):
    SUBSCRIBE_WILDCARDS = "SUBSCRIBE_WILDCARDS"
    # The broker drops a message whose TTL ran out by itself (the runtime then needs no
    # ``expiration`` field in the envelope).
    MESSAGE_TTL = "MESSAGE_TTL"
    # The broker keeps a topic's messages where they can be listed and deleted one by one
    # (:class:`RetainedMessages`): what lets an operator inspect, replay and purge dead letters.
    RETAINED_MESSAGES = "RETAINED_MESSAGES"


_GO_ZERO = re.compile(r"^[-+]?0$")
_INTEGER = re.compile(r"^[-+]?[0-9]+$")
# Go caps a TTL beyond time.Duration's range at its largest value, about 292 years.
_MAX_TTL_SECONDS = (2**63 - 1) // 10**9
# Go's time.ParseDuration: every number carries a unit, no spaces.
_GO_DURATION = re.compile(r"^[-+]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:ns|us|µs|μs|ms|s|m|h))+$")


def message_ttl(metadata: Mapping[str, str]) -> float | None:
    """A message's time to live in seconds from Dapr's ``ttl`` / ``ttlInSeconds`` metadata.

    Read as components-contrib reads it (names matched case-insensitively, ``ttl`` first): a Go
    duration (a negative one means 0) or a whole number of seconds above zero. ``None`` when no TTL
    is given; ``ValueError`` with Dapr's wording when the value cannot be read. Shared so that the
    runtime and brokers with ``MESSAGE_TTL`` read a TTL the same way.
    """
    value = ""
    for wanted in ("ttl", "ttlinseconds"):
        value = next((v for k, v in metadata.items() if k.lower() == wanted), "")
        if value:
            break
    if not value:
        return None
    if _GO_ZERO.match(value):
        return 0.0
    if _INTEGER.match(value):
        seconds = int(value)
        if seconds <= 0:
            raise ValueError(f"ttl value must be higher than zero: actual is '{seconds}'")
        return float(min(seconds, _MAX_TTL_SECONDS))
    if not _GO_DURATION.match(value):
        raise ValueError(f"ttl value must be a valid integer: actual is '{value}'")
    return min(max(0.0, parse_duration(value.replace("μs", "us"))), _MAX_TTL_SECONDS)


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


@dataclass(frozen=True, slots=True)
class RetainedMessage:
    """A message a broker still holds on a topic."""

    id: str
    topic: str
    data: bytes
    metadata: dict[str, str]
    # When the broker stored it, Unix time.
    published: float


class Subscription(Protocol):
    async def close(self) -> None:
        """Stop taking new messages and wait for the handlers in flight to finish."""


class PubSub(Component, Protocol):
    features: ClassVar[frozenset[PubSubFeature]]

    async def publish(self, topic: str, data: bytes, metadata: dict[str, str]) -> None:
        """Return only once the broker holds the message durably (for durable brokers)."""

    async def subscribe(self, topic: str, handler: Handler, options: SubscribeOptions) -> Subscription:
        """Start consuming ``topic`` for this app (consumer group = app id)."""


class RetainedMessages(Protocol):
    """Brokers with ``RETAINED_MESSAGES``: a topic's stored messages, listed and deleted by id.

    Only what the broker holds durably is listed; a message handed to a consumer may still be
    listed until it is acknowledged (or longer, for brokers that keep acknowledged messages).
    """

    async def retained(self, topic: str, limit: int) -> list[RetainedMessage]:
        """Up to ``limit`` messages on ``topic``, oldest first."""

    async def retained_message(self, topic: str, message_id: str) -> RetainedMessage | None:
        """One message by the id :meth:`retained` gave it; None when it is not there (any more)."""

    async def delete_retained(self, topic: str, message_ids: Sequence[str]) -> int:
        """Delete these messages from ``topic``; how many were there to delete."""

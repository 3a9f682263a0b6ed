"""Dead letters an operator can inspect, replay and purge (docs/dashboard.md).

When a delivery gives up, :func:`mark` adds why, when and from where to the message's metadata
before it is republished to the dead-letter topic. For the brokers that keep a topic's messages
where they can be listed (``RETAINED_MESSAGES``), :class:`DeadLetters` lists them, shows one, puts
them back on their original topic, or deletes them. Replay is at-least-once: a message leaves the
dead-letter topic only after the broker acknowledged its republish, so a failure at any point
leaves it where it was (at worst delivered twice, never lost).

Used by the sidecar's admin API (``runtime/http/deadletters.py``); knows brokers only through
``components.pubsub.base``.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

from components.pubsub.base import Message, PubSubFeature, RetainedMessage, RetainedMessages
from runtime import errors
from runtime.errors import APIError

if TYPE_CHECKING:
    from runtime.blocks.pubsub import BrokerEntry, PubSubBlock

# Message metadata added on the way to the dead-letter topic. Metadata reaches a subscriber of that
# topic as HTTP headers, so these are header names.
REASON = "pillion-deadletter-reason"
TIME = "pillion-deadletter-time"
ORIGINAL_TOPIC = "pillion-deadletter-topic"
APP_ID = "pillion-deadletter-app"
MARKS = (REASON, TIME, ORIGINAL_TOPIC, APP_ID)
# A broker deduplicates on the event id (JetStream's Nats-Msg-Id): a replay is a deliberate resend.
_DEDUPLICATION_KEYS = ("cloudevent.id",)
_REASON_LIMIT = 500
# Most messages one list, replay or purge call reads from the broker at a time.
PAGE = 100
MAX_LIST = 1000
# A replay or purge of "all" stops after this long, however fast new dead letters arrive.
_ALL_FOR_AT_MOST = 30.0
T = TypeVar("T")


def mark(message: Message, reason: str, app_id: str) -> dict[str, str]:
    """The metadata to dead-letter ``message`` with."""
    # One line (it becomes a header value), and short: an app's error page can be long.
    reason = " ".join(reason.split())[:_REASON_LIMIT]
    return {
        **message.metadata,
        REASON: reason,
        TIME: datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        ORIGINAL_TOPIC: message.topic,
        APP_ID: app_id,
    }


def unmarked(metadata: dict[str, str]) -> dict[str, str]:
    """The metadata a replayed message is published with."""
    return {k: v for k, v in metadata.items() if k not in MARKS and k not in _DEDUPLICATION_KEYS}


def _event(data: bytes) -> dict[str, Any] | None:
    try:
        decoded = json.loads(data)
    except ValueError:
        return None
    return decoded if isinstance(decoded, dict) else None


@dataclass(frozen=True)
class DeadLetter:
    message: RetainedMessage

    @property
    def original_topic(self) -> str:
        marked = self.message.metadata.get(ORIGINAL_TOPIC)
        if marked:
            return marked
        # Dead-lettered before marks existed, or by a daprd: the envelope names its topic.
        event = _event(self.message.data)
        topic = event.get("topic") if event else None
        return topic if isinstance(topic, str) else ""

    @property
    def reason(self) -> str:
        return self.message.metadata.get(REASON, "")

    @property
    def time(self) -> str:
        marked = self.message.metadata.get(TIME)
        if marked:
            return marked
        stamp = datetime.fromtimestamp(self.message.published, UTC)
        return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def summary(self) -> dict[str, Any]:
        event = _event(self.message.data)
        return {
            "id": self.message.id,
            "originalTopic": self.original_topic,
            "reason": self.reason,
            "time": self.time,
            "appId": self.message.metadata.get(APP_ID, ""),
            "eventId": str(event.get("id", "")) if event else "",
            "size": len(self.message.data),
        }

    def detail(self) -> dict[str, Any]:
        shown = self.summary()
        shown["metadata"] = self.message.metadata
        event = _event(self.message.data)
        if event is not None:
            shown["cloudEvent"] = event
        else:
            try:
                shown["data"] = self.message.data.decode("utf-8")
            except UnicodeDecodeError:
                shown["dataBase64"] = base64.b64encode(self.message.data).decode()
        return shown


@dataclass
class Outcome:
    """What a replay or purge did: the ids done, and the first failure that stopped it."""

    done: list[str]
    missing: list[str]
    error: str = ""

    def describe(self) -> dict[str, Any]:
        return {"done": self.done, "missing": self.missing}


class DeadLetters:
    """The dead letters on one topic of one pubsub."""

    def __init__(self, pubsub: PubSubBlock, pubsub_name: str, topic: str) -> None:
        entry = pubsub.broker(pubsub_name)
        if entry is None:
            raise errors.pubsub_not_found(pubsub_name, {})
        if PubSubFeature.RETAINED_MESSAGES not in entry.broker.features:
            raise errors.deadletters_not_supported(pubsub_name)
        self.entry: BrokerEntry = entry
        self.topic = topic
        self._store = cast(RetainedMessages, entry.broker)

    async def _call(self, what: str, work: Awaitable[T]) -> T:
        try:
            return await work
        except APIError:
            raise
        except Exception as exc:
            problem = str(exc) or type(exc).__name__
            raise errors.deadletters_failed(self.entry.name, self.topic, what, problem) from None

    async def listed(self, limit: int = PAGE) -> list[DeadLetter]:
        found = await self._call("listing messages", self._store.retained(self.topic, min(limit, MAX_LIST)))
        return [DeadLetter(m) for m in found]

    async def get(self, message_id: str) -> DeadLetter:
        found = await self._call("reading a message", self._store.retained_message(self.topic, message_id))
        if found is None:
            raise errors.deadletter_not_found(self.topic, message_id)
        return DeadLetter(found)

    async def _chosen(self, ids: Sequence[str] | None, missing: list[str]) -> list[DeadLetter]:
        if ids is None:
            return await self.listed(PAGE)
        chosen = []
        for message_id in ids:
            found = await self._call(
                "reading a message", self._store.retained_message(self.topic, message_id)
            )
            if found is None:
                missing.append(message_id)
            else:
                chosen.append(DeadLetter(found))
        return chosen

    async def replay(self, ids: Sequence[str] | None) -> Outcome:
        """Republish to the original topics (all when ``ids`` is None), then delete each one."""
        outcome = Outcome([], [])
        broker = self.entry.broker
        started = time.monotonic()
        while True:
            batch = await self._chosen(ids, outcome.missing)
            if not batch:
                return outcome
            for letter in batch:
                target = letter.original_topic
                if not target or target == self.topic:
                    outcome.error = f"message {letter.message.id} names no original topic to replay it to"
                    return outcome
                try:
                    await broker.publish(target, letter.message.data, unmarked(letter.message.metadata))
                except Exception as exc:
                    outcome.error = f"republishing message {letter.message.id} to {target} failed: {exc}"
                    return outcome
                try:
                    await self._store.delete_retained(self.topic, [letter.message.id])
                except Exception as exc:
                    # Published but still here: a second replay would deliver it twice, never lose it.
                    outcome.done.append(letter.message.id)
                    outcome.error = (
                        f"message {letter.message.id} was replayed but is still on {self.topic}: {exc}"
                    )
                    return outcome
                outcome.done.append(letter.message.id)
            if ids is not None or time.monotonic() - started > _ALL_FOR_AT_MOST:
                return outcome

    async def purge(self, ids: Sequence[str] | None) -> Outcome:
        """Delete messages (all when ``ids`` is None)."""
        outcome = Outcome([], [])
        started = time.monotonic()
        while True:
            batch = await self._chosen(ids, outcome.missing)
            if not batch:
                return outcome
            chosen = [letter.message.id for letter in batch]
            await self._call("deleting messages", self._store.delete_retained(self.topic, chosen))
            outcome.done.extend(chosen)
            if ids is not None or time.monotonic() - started > _ALL_FOR_AT_MOST:
                return outcome

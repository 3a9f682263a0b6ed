"""The transactional outbox: a state transaction and the messages it publishes become visible
together or not at all.

A transactional state store with ``outboxPublishPubsub`` and ``outboxPublishTopic`` in its metadata
stages, inside each state transaction (only transactions, only upserts):

1. for each upsert a CloudEvent with id ``outbox-<uuid>``, published first to the internal topic
   ``<NAMESPACE><appId><outboxPublishTopic>outbox`` on ``outboxPubsub`` (default: the publish pubsub);
   a failure there fails the transaction before anything is written (``ERR_PUBLISH_OUTBOX``);
2. a marker key ``outbox-<uuid>`` (no app-id prefix), written in the same store transaction as the
   state.

The relay, subscribed to the internal topic, publishes a staged event to ``outboxPublishTopic`` on
``outboxPublishPubsub`` only once its marker can be read, then deletes the marker. So a message goes
out only if its transaction committed, and a committed transaction's message, already held by the
broker, goes out even if the sidecar dies right after the commit (at least once: a crash between the
final publish and the marker's deletion publishes it again). A staged event whose marker never
appears (the transaction failed, or the sidecar died before committing) is dropped once it is older
than ``ABANDON_AFTER``, or at once with ``outboxDiscardWhenMissingState: true``.

Ops with metadata ``outbox.projection: "true"`` are not stored: their value is what the upsert of
the same key publishes instead of the stored value.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeGuard

from components.pubsub.base import Message, SubscribeOptions
from components.state.base import DeleteOp, SetOp
from runtime import errors
from runtime.blocks.outbox_settings import OutboxSettings
from runtime.blocks.pubsub import Publication
from runtime.compat import cloudevents, gojson

if TYPE_CHECKING:
    from components.pubsub.base import Subscription
    from runtime.blocks.pubsub import PubSubBlock
    from runtime.blocks.state import DeleteItem, SaveItem, StateBlock, StoreEntry

log = logging.getLogger("pillion.outbox")
MARKER_PREFIX = "outbox-"
PROJECTION = "outbox.projection"
# How long the relay looks for a marker before handing the message back to the broker.
MARKER_WAIT = 10.0
# A staged event older than this whose marker is still missing belongs to a transaction that never
# committed (a transaction gives up long before): it is dropped.
ABANDON_AFTER = 120.0


class Outbox:
    def __init__(self, app_id: str, state: StateBlock, pubsub: PubSubBlock) -> None:
        self._app_id = app_id
        self._state = state
        self._pubsub = pubsub
        self._relays: list[Subscription] = []

    # --- the write path -------------------------------------------------------------------------

    async def stage(
        self,
        entry: StoreEntry,
        settings: OutboxSettings,
        ops: Sequence[SaveItem | DeleteItem],
        traceparent: str,
    ) -> tuple[list[SaveItem | DeleteItem], list[SetOp]]:
        """Publish the staged events; the ops to store (projections removed) and the markers."""
        upserts = [op for op in ops if _is_upsert(op)]
        projections = {op.key: op for op in upserts if op.metadata.get(PROJECTION, "").lower() == "true"}
        kept = [op for op in ops if not any(op is p for p in projections.values())]
        broker = self._pubsub.entry(settings.pubsub, settings.internal_topic(self._app_id), {})
        markers: list[SetOp] = []
        for op in kept:
            if not _is_upsert(op):
                continue
            marker = MARKER_PREFIX + str(uuid.uuid4())
            source = projections.get(op.key, op)
            event = self._event(marker, settings, source, traceparent)
            try:
                await broker.broker.publish(settings.internal_topic(self._app_id), gojson.encode(event), {})
            except Exception as exc:
                raise errors.outbox_publish_failed(self._app_id, str(exc) or type(exc).__name__) from None
            markers.append(SetOp(marker, b'"0"'))
        return kept, markers

    def _event(self, marker: str, settings: OutboxSettings, op: SaveItem, traceparent: str) -> dict[str, Any]:
        content_type = op.metadata.get("contentType") or "application/json"
        event = cloudevents.new_envelope(
            app_id=self._app_id,
            topic="",
            pubsub=settings.pubsub,
            content_type=content_type,
            data=op.value,
            traceparent=traceparent,
            tracestate="",
            metadata={},
        )
        event["id"] = marker
        # As daprd: the op's metadata travels as top-level CloudEvent attributes.
        for key, value in op.metadata.items():
            if key not in ("data", "id", PROJECTION):
                event[key] = value
        return event

    # --- the relay ------------------------------------------------------------------------------

    async def start(self, stores: Sequence[tuple[StoreEntry, OutboxSettings]]) -> None:
        for entry, settings in stores:
            topic = settings.internal_topic(self._app_id)
            try:
                broker = self._pubsub.entry(settings.pubsub, topic, {})
            except errors.APIError:
                log.error(
                    "state store %s: outbox pubsub %s is not loaded; its outbox is off",
                    entry.name,
                    settings.pubsub,
                )
                continue

            async def relay(
                message: Message, entry: StoreEntry = entry, settings: OutboxSettings = settings
            ) -> None:
                await self._relay(entry, settings, message)

            self._relays.append(await broker.broker.subscribe(topic, relay, SubscribeOptions(concurrency=10)))
            log.info(
                "state store %s: outbox relays %s to %s/%s",
                entry.name,
                topic,
                settings.publish_pubsub,
                settings.publish_topic,
            )

    async def stop(self) -> None:
        relays, self._relays = self._relays, []
        await asyncio.gather(*(r.close() for r in relays), return_exceptions=True)

    async def _relay(self, entry: StoreEntry, settings: OutboxSettings, message: Message) -> None:
        try:
            event = json.loads(message.data)
            marker = str(event["id"])
        except (ValueError, KeyError, TypeError):
            log.warning("outbox of %s: dropped an internal message that is not a staged event", entry.name)
            return
        if not await self._marker_seen(entry, marker):
            age = time.time() - _event_time(event)
            if settings.discard_when_missing or age > ABANDON_AFTER:
                log.warning(
                    "outbox of %s: %s has no committed state; its message is dropped", entry.name, marker
                )
                return
            raise RuntimeError(f"outbox marker {marker} is not there yet")
        event["topic"] = settings.publish_topic
        event["pubsubname"] = settings.publish_pubsub
        target = self._pubsub.entry(settings.publish_pubsub, settings.publish_topic, {})
        publication = Publication(gojson.encode(event), "application/cloudevents+json", {})
        await self._pubsub.publish(
            target, settings.publish_topic, publication, str(event.get("traceparent", "")), ""
        )
        await entry.store.delete(DeleteOp(marker))

    @staticmethod
    async def _marker_seen(entry: StoreEntry, marker: str) -> bool:
        deadline = time.monotonic() + MARKER_WAIT
        pause = 0.05
        while True:
            if await entry.store.get(marker) is not None:
                return True
            if time.monotonic() + pause > deadline:
                return False
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)


def _is_upsert(op: SaveItem | DeleteItem) -> TypeGuard[SaveItem]:
    return hasattr(op, "value")


def _event_time(event: dict[str, Any]) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return time.time()

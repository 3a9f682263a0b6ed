"""The transactional outbox's metadata on a state store (runtime/blocks/outbox.py does the work)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    publish_pubsub: str
    publish_topic: str
    pubsub: str
    discard_when_missing: bool

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> OutboxSettings | None:
        pubsub, topic = str(metadata["outboxPublishPubsub"]), str(metadata["outboxPublishTopic"])
        if not pubsub or not topic:
            return None
        return cls(
            pubsub,
            topic,
            str(metadata["outboxPubsub"]) or pubsub,
            bool(metadata["outboxDiscardWhenMissingState"]),
        )

    def internal_topic(self, app_id: str) -> str:
        return f"{os.environ.get('NAMESPACE', '')}{app_id}{self.publish_topic}outbox"

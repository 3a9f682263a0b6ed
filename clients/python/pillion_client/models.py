"""What goes to the sidecar and what comes back, as small typed records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Concurrency = Literal["first-write", "last-write"]
Consistency = Literal["eventual", "strong"]


@dataclass(frozen=True, slots=True)
class SaveItem:
    """One key to save. ``value`` is any JSON-encodable value; ``etag`` makes the write conditional."""

    key: str
    value: Any = None
    etag: str | None = None
    metadata: dict[str, str] | None = None
    concurrency: Concurrency | None = None
    consistency: Consistency | None = None


@dataclass(frozen=True, slots=True)
class DeleteItem:
    """A delete inside a transaction; with ``etag``, only at that ETag."""

    key: str
    etag: str | None = None
    metadata: dict[str, str] | None = None
    concurrency: Concurrency | None = None
    consistency: Consistency | None = None


@dataclass(frozen=True, slots=True)
class StateItem:
    """A stored value. ``metadata`` comes from response headers, so its keys are lower-case
    (``ttlexpiretime``)."""

    key: str
    value: Any
    etag: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BulkStateItem:
    """One key of a bulk get or a query result; ``found`` is false for a key that does not exist."""

    key: str
    value: Any = None
    found: bool = False
    etag: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class QueryResponse:
    results: list[BulkStateItem]
    token: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BulkPublishEntry:
    """One message of a bulk publish. Defaults: a new UUID, and the content type ``publish`` would
    use (bytes are sent base64-encoded as application/octet-stream)."""

    event: Any
    content_type: str | None = None
    entry_id: str | None = None
    metadata: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class FailedEntry:
    entry_id: str
    error: str


@dataclass(frozen=True, slots=True)
class Rule:
    path: str
    match: str = ""


@dataclass(frozen=True, slots=True)
class ComponentMetadata:
    name: str
    type: str
    version: str = ""
    capabilities: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SubscriptionMetadata:
    pubsub_name: str
    topic: str
    type: str
    rules: list[Rule] = field(default_factory=list)
    dead_letter_topic: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SidecarMetadata:
    """GET /v1.0/metadata; ``raw`` keeps every field, the ones not modelled here included."""

    id: str
    runtime_version: str
    components: list[ComponentMetadata]
    subscriptions: list[SubscriptionMetadata]
    extended: dict[str, str]
    raw: dict[str, Any]

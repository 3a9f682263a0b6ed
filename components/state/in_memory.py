"""``state.in-memory``: a dict in the sidecar process. Nothing survives a restart."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from components.base import ComponentContext
from components.metadata import FieldType, MetadataField, MetadataSchema
from components.state.base import (
    ANY_KEY,
    DeleteOp,
    ETagMismatch,
    KeyLimits,
    Operation,
    SetOp,
    StateFeature,
    StoredItem,
)
from components.state.query import Query, QueryPage, QueryResult, run_query


class InMemoryStateStore:
    schema: ClassVar[MetadataSchema] = MetadataSchema(
        (
            MetadataField(
                "cleanupInterval",
                FieldType.DURATION,
                default=1.0,
                description="How often expired keys are swept from memory (they read as missing at once).",
            ),
        )
    )
    key_limits: ClassVar[KeyLimits] = ANY_KEY
    # Its data lives in this process: other processes (--workers) cannot see it.
    process_local: ClassVar[bool] = True
    features: ClassVar[frozenset[StateFeature]] = frozenset(
        {StateFeature.ETAG, StateFeature.TRANSACTIONAL, StateFeature.TTL, StateFeature.QUERY_API}
    )
    max_operations: int | None = None

    def __init__(self, metadata: dict[str, Any], context: ComponentContext) -> None:
        self._sweep_every: float = metadata["cleanupInterval"]
        # key -> (data, etag, expiry as a wall-clock timestamp or None)
        self._items: dict[str, tuple[bytes, str, float | None]] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def init(self) -> None:
        if self._sweep_every > 0:
            self._sweeper = asyncio.create_task(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def ping(self) -> None:
        return None

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_every)
            now = time.time()
            expired = [k for k, (_, _, exp) in self._items.items() if exp is not None and exp <= now]
            for key in expired:
                self._items.pop(key, None)

    def _live(self, key: str, now: float) -> tuple[bytes, str, float | None] | None:
        entry = self._items.get(key)
        if entry is None:
            return None
        if entry[2] is not None and entry[2] <= now:
            del self._items[key]
            return None
        return entry

    @staticmethod
    def _to_item(entry: tuple[bytes, str, float | None]) -> StoredItem:
        expires = datetime.fromtimestamp(entry[2], UTC) if entry[2] is not None else None
        return StoredItem(entry[0], entry[1], expires)

    async def get(self, key: str) -> StoredItem | None:
        entry = self._live(key, time.time())
        return None if entry is None else self._to_item(entry)

    async def bulk_get(self, keys: Sequence[str]) -> list[StoredItem | None]:
        now = time.time()
        entries = [self._live(key, now) for key in keys]
        return [None if e is None else self._to_item(e) for e in entries]

    @staticmethod
    def _check(op: Operation, current: tuple[bytes, str, float | None] | None) -> None:
        if op.etag is not None:
            if current is None or current[1] != op.etag:
                raise ETagMismatch(op.key)
        elif isinstance(op, SetOp) and op.first_write and current is not None:
            raise ETagMismatch(op.key, "first-write: the key already exists")

    @staticmethod
    def _new_entry(op: SetOp, now: float) -> tuple[bytes, str, float | None]:
        expiry = now + op.ttl if op.ttl is not None and op.ttl > 0 else None
        return (op.value, str(uuid.uuid4()), expiry)

    async def set(self, op: SetOp) -> None:
        now = time.time()
        self._check(op, self._live(op.key, now))
        self._items[op.key] = self._new_entry(op, now)

    async def delete(self, op: DeleteOp) -> None:
        self._check(op, self._live(op.key, time.time()))
        self._items.pop(op.key, None)

    async def transact(self, ops: Sequence[Operation]) -> None:
        # No await inside: the event loop makes this block atomic. Work on an overlay so that a
        # failed check leaves the store untouched.
        now = time.time()
        overlay: dict[str, tuple[bytes, str, float | None] | None] = {}
        for op in ops:
            current = overlay[op.key] if op.key in overlay else self._live(op.key, now)
            self._check(op, current)
            overlay[op.key] = self._new_entry(op, now) if isinstance(op, SetOp) else None
        for key, entry in overlay.items():
            if entry is None:
                self._items.pop(key, None)
            else:
                self._items[key] = entry

    async def query(self, key_prefix: str, query: Query) -> QueryPage:
        now = time.time()
        items = [
            QueryResult(key, data, etag)
            for key, (data, etag, exp) in list(self._items.items())
            if key.startswith(key_prefix) and (exp is None or exp > now)
        ]
        return run_query(query, items)

"""The state store interface, after components-contrib's ``state.Store`` and its feature flags."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol, runtime_checkable

from components.base import Component
from components.state.query import Query, QueryPage


class StateFeature(StrEnum):
    ETAG = "ETAG"
    TRANSACTIONAL = "TRANSACTIONAL"
    TTL = "TTL"
    QUERY_API = "QUERY_API"


class ETagMismatch(Exception):
    """The etag sent does not match the stored one (or the key does not exist)."""

    def __init__(self, key: str, detail: str = "etag mismatch") -> None:
        super().__init__(detail)
        self.key = key


class ETagInvalid(Exception):
    """The etag sent cannot be an etag of this store (for example not a number on Redis)."""

    def __init__(self, key: str, detail: str = "invalid etag value") -> None:
        super().__init__(detail)
        self.key = key


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """The keys a store can hold, as stored (the runtime's key prefix included). The building
    block refuses any other key with 400 before the store sees it."""

    # Longest key in UTF-8 bytes; None: no limit.
    max_bytes: int | None = None
    # Whether a key may contain U+0000.
    nul: bool = True

    def problem(self, stored_key: str) -> str | None:
        """Why the store cannot hold ``stored_key``, or None when it can."""
        if not self.nul and "\x00" in stored_key:
            return "contains a NUL character, which this state store cannot hold"
        if self.max_bytes is not None and len(stored_key) * 4 > self.max_bytes:
            size = len(stored_key.encode("utf-8", "surrogatepass"))
            if size > self.max_bytes:
                return (
                    f"is {size} bytes long with its key prefix; this state store holds keys of "
                    f"at most {self.max_bytes} bytes"
                )
        return None


ANY_KEY = KeyLimits()


@dataclass(slots=True)
class StoredItem:
    data: bytes
    etag: str | None = None
    expires_at: datetime | None = None  # UTC


@dataclass(slots=True)
class SetOp:
    key: str
    value: bytes
    etag: str | None = None
    first_write: bool = False
    # None: the store's default TTL (if any); <= 0: no expiry; > 0: seconds from now.
    ttl: int | None = None


@dataclass(slots=True)
class DeleteOp:
    key: str
    etag: str | None = None


Operation = SetOp | DeleteOp


class StateStore(Component, Protocol):
    """Keys handed to a store already carry the runtime's key prefix.

    ETag rules common to every Pillion store (stricter than some Dapr stores, see docs/state.md):
    an etag, when given, is always checked; an etag on a missing key is a mismatch; first-write
    without an etag succeeds only when the key does not exist (or has expired).
    """

    # A property here so that a wrapper (components/state/encryption.py) can report its own set.
    @property
    def features(self) -> frozenset[StateFeature]: ...

    @property
    def key_limits(self) -> KeyLimits: ...

    async def get(self, key: str) -> StoredItem | None: ...

    async def bulk_get(self, keys: Sequence[str]) -> list[StoredItem | None]: ...

    async def set(self, op: SetOp) -> None:
        """Raise ETagMismatch or ETagInvalid when the etag check fails."""

    async def delete(self, op: DeleteOp) -> None:
        """Raise ETagMismatch or ETagInvalid when the etag check fails."""


@runtime_checkable
class TransactionalStateStore(StateStore, Protocol):
    max_operations: int | None

    async def transact(self, ops: Sequence[Operation]) -> None:
        """Apply every operation in order, or none of them. Etags are checked against the state
        as the earlier operations of the same transaction leave it."""


@runtime_checkable
class QueryableStateStore(StateStore, Protocol):
    async def query(self, key_prefix: str, query: Query) -> QueryPage:
        """Run ``query`` over the live items whose stored key starts with ``key_prefix``."""

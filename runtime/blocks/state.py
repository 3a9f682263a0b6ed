"""The state building block: store lookup, key prefixes, option checks and error mapping.

It talks to stores only through the protocols in ``components.state.base``; it never imports a
concrete store.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, TypeVar, cast

from components.metadata import MetadataError
from components.state.base import (
    DeleteOp,
    ETagInvalid,
    ETagMismatch,
    Operation,
    QueryableStateStore,
    SetOp,
    StateFeature,
    StateStore,
    StoredItem,
    TransactionalStateStore,
)
from components.state.query import QueryPage, parse_query
from runtime import errors
from runtime.blocks.base import BlockContext, ComponentProblem, LoadedComponent
from runtime.blocks.outbox_settings import OutboxSettings

if TYPE_CHECKING:
    from runtime.blocks.outbox import Outbox
    from runtime.observability.metrics import Metrics
    from runtime.resources.resiliency import Policy, Resiliency

T = TypeVar("T")

log = logging.getLogger("pillion")

_INTEGER = re.compile(r"[+-]?[0-9]+")
# About 317 years: beyond any real use, and an expiry date every store can still compute and keep.
MAX_TTL_SECONDS = 10**10
CONCURRENCY = frozenset({"", "first-write", "last-write"})
CONSISTENCY = frozenset({"", "eventual", "strong"})


def key_prefix(strategy: str, app_id: str, store_name: str) -> str:
    """The text put before every key (Dapr's ``keyPrefix`` rules, docs/state.md: Key prefixes)."""
    strategy = strategy.lower()
    if strategy == "none":
        return ""
    if strategy == "name":
        return f"{store_name}||"
    if strategy == "namespace" and os.environ.get("NAMESPACE"):
        return f"{os.environ['NAMESPACE']}.{app_id}||"
    if strategy in ("appid", "namespace"):
        return f"{app_id}||" if app_id else ""
    if "||" in strategy:
        raise ValueError(f"keyPrefix {strategy!r} must not contain '||'")
    return f"{strategy}||"


@dataclass(slots=True)
class SaveItem:
    key: str
    value: bytes
    etag: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    concurrency: str = ""
    consistency: str = ""


@dataclass(slots=True)
class DeleteItem:
    key: str
    etag: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    concurrency: str = ""
    consistency: str = ""


@dataclass(slots=True)
class StoreEntry:
    name: str
    store: StateStore
    prefix: str
    # The Resiliency policy of the component's outbound calls, if any.
    policy: Policy | None = None
    # Transactional outbox settings (runtime/blocks/outbox.py); None when the store has none.
    outbox: OutboxSettings | None = None

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        if self.policy is None:
            return await operation()
        return await self.policy.run(operation, permanent=_ANSWERED)


class OptionError(ValueError):
    """A request option the store cannot accept (bad concurrency, non-integer TTL, ...)."""


# Answers of the store, not failures: a Resiliency policy neither retries them nor counts them.
_ANSWERED: tuple[type[BaseException], ...] = (ETagMismatch, ETagInvalid, OptionError)


def _ttl(metadata: Mapping[str, str]) -> int | None:
    raw = metadata.get("ttlInSeconds")
    if raw is None:
        return None
    if not _INTEGER.fullmatch(raw):
        raise OptionError(f"ttlInSeconds must be an integer, not {raw!r}")
    # Checked on the text first: Python refuses to convert thousands of digits.
    if len(raw.lstrip("+-0")) > len(str(MAX_TTL_SECONDS)):
        if raw.startswith("-"):
            return -1  # any value of 0 or less means no expiry
        raise OptionError(f"ttlInSeconds must be at most {MAX_TTL_SECONDS}, not {raw}")
    ttl = int(raw)
    if ttl > MAX_TTL_SECONDS:
        raise OptionError(f"ttlInSeconds must be at most {MAX_TTL_SECONDS}, not {raw}")
    return ttl


def _check_options(concurrency: str, consistency: str) -> None:
    if concurrency not in CONCURRENCY:
        raise OptionError(f"unrecognized concurrency model '{concurrency}'")
    if consistency not in CONSISTENCY:
        raise OptionError(f"unrecognized consistency model '{consistency}'")


def check_key(entry: StoreEntry, key: str) -> None:
    """400 for a key the request may not use, or the store cannot hold, before any is used."""
    if "||" in key:
        raise errors.state_illegal_key(entry.name, key)
    problem = entry.store.key_limits.problem(entry.prefix + key)
    if problem is not None:
        raise errors.state_key_not_held(entry.name, key, problem)


class StateBlock:
    kind: ClassVar[str] = "state"

    def __init__(self, app_id: str, stores: Sequence[StoreEntry], metrics: Metrics | None = None) -> None:
        self.app_id = app_id
        self._stores = {entry.name: entry for entry in stores}
        self.metrics = metrics
        # Set by the sidecar once the pubsub block exists: stages outbox messages in transactions.
        self.outbox: Outbox | None = None
        self.resiliency: Resiliency | None = None

    @classmethod
    def create(cls, context: BlockContext) -> StateBlock:
        block = cls(context.app_id, [], context.metrics)
        block.resiliency = context.resiliency
        return block

    # --- the component life cycle (runtime/lifecycle/component_set.py) -----------------------------------

    def build(self, component: LoadedComponent) -> StoreEntry:
        name = component.resource.name
        store = _encrypt_at_rest(component, cast(StateStore, component.instance))
        try:
            prefix = key_prefix(str(component.metadata["keyPrefix"]), self.app_id, name)
        except ValueError as exc:
            raise ComponentProblem(str(exc)) from None
        policy = self.resiliency.for_component(name, "outbound", "Statestore") if self.resiliency else None
        outbox = OutboxSettings.from_metadata(component.metadata)
        if outbox is not None and StateFeature.TRANSACTIONAL not in store.features:
            raise ComponentProblem("the outbox (outboxPublishPubsub) needs a store with transactions")
        return StoreEntry(name, store, prefix, policy, outbox)

    def outbox_stores(self) -> list[tuple[StoreEntry, OutboxSettings]]:
        return [(e, e.outbox) for e in self._stores.values() if e.outbox is not None]

    def capabilities(self, entry: StoreEntry) -> list[str]:
        features = {str(f) for f in entry.store.features}
        if {"ETAG", "TRANSACTIONAL"} <= features:
            features.add("ACTOR")
        return sorted(features)

    def install(self, name: str, entry: StoreEntry | None) -> None:
        if entry is None:
            self._stores.pop(name, None)
        else:
            self._stores[name] = entry

    def _failed(self, store: str, operation: str) -> None:
        """Count a failure of the store itself (not of the caller's input or an etag check)."""
        if self.metrics is not None:
            self.metrics.component_error(store, operation)

    def entry(self, name: str) -> StoreEntry:
        """The store a request works on from start to end (a hot reload may swap the name's
        entry meanwhile); 500 when no store is configured, else 400 when ``name`` is unknown."""
        entry = self._stores.get(name)
        if entry is not None:
            return entry
        if not self._stores:
            raise errors.state_store_not_configured(name, self.app_id)
        raise errors.state_store_not_found(name, self.app_id)

    # --- reads ---------------------------------------------------------------------------------

    async def get(self, entry: StoreEntry, key: str) -> StoredItem | None:
        store = entry.name
        check_key(entry, key)
        try:
            return await entry.call(lambda: entry.store.get(entry.prefix + key))
        except Exception as exc:
            self._failed(store, "get")
            raise errors.state_get_failed(store, key, exc) from exc

    async def bulk_get(self, entry: StoreEntry, keys: Sequence[str]) -> list[StoredItem | None]:
        store = entry.name
        for key in keys:
            check_key(entry, key)
        if not keys:
            return []
        try:
            return await entry.call(lambda: entry.store.bulk_get([entry.prefix + key for key in keys]))
        except Exception as exc:
            self._failed(store, "bulk_get")
            raise errors.state_bulk_get_failed(store, exc) from exc

    # --- writes --------------------------------------------------------------------------------

    @staticmethod
    def _set_op(prefix: str, item: SaveItem) -> SetOp:
        _check_options(item.concurrency, item.consistency)
        etag = item.etag or None
        return SetOp(
            prefix + item.key, item.value, etag, item.concurrency == "first-write", _ttl(item.metadata)
        )

    @staticmethod
    def _delete_op(prefix: str, item: DeleteItem) -> DeleteOp:
        _check_options(item.concurrency, item.consistency)
        return DeleteOp(prefix + item.key, item.etag or None)

    async def save(self, entry: StoreEntry, items: Sequence[SaveItem]) -> None:
        store = entry.name
        for item in items:
            check_key(entry, item.key)
        # Every item is checked before anything is written, so bad input never half-applies.
        try:
            ops = [self._set_op(entry.prefix, item) for item in items]
        except OptionError as exc:
            raise errors.state_save_failed(store, str(exc)) from None
        if len(ops) == 1:
            results: list[BaseException | None] = [
                await _capture(entry.call(lambda: entry.store.set(ops[0])))
            ]
        else:
            results = await asyncio.gather(
                *(entry.call(functools.partial(entry.store.set, op)) for op in ops), return_exceptions=True
            )
        failures = [r for r in results if r is not None]
        if not failures:
            return
        detail = "; ".join(str(e) for e in failures)
        if any(isinstance(e, ETagMismatch) for e in failures):
            raise errors.state_save_failed(store, detail, "mismatch")
        if any(isinstance(e, ETagInvalid) for e in failures):
            raise errors.state_save_failed(store, detail, "invalid")
        self._failed(store, "set")
        raise errors.state_save_failed(store, detail)

    async def delete(self, entry: StoreEntry, item: DeleteItem) -> None:
        store = entry.name
        check_key(entry, item.key)
        try:
            op = self._delete_op(entry.prefix, item)
            await entry.call(lambda: entry.store.delete(op))
        except ETagMismatch as exc:
            raise errors.state_delete_failed(item.key, str(exc), "mismatch") from None
        except ETagInvalid as exc:
            raise errors.state_delete_failed(item.key, str(exc), "invalid") from None
        except Exception as exc:
            if not isinstance(exc, OptionError):
                self._failed(store, "delete")
            raise errors.state_delete_failed(item.key, str(exc)) from exc

    @staticmethod
    def transactional(entry: StoreEntry) -> TransactionalStateStore:
        if StateFeature.TRANSACTIONAL not in entry.store.features:
            raise errors.state_transactions_not_supported(entry.name)
        return cast(TransactionalStateStore, entry.store)

    async def transact(self, entry: StoreEntry, ops: Sequence[SaveItem | DeleteItem]) -> None:
        store, prefix = entry.name, entry.prefix
        target = self.transactional(entry)
        for item in ops:
            check_key(entry, item.key)
        limit = target.max_operations
        if limit is not None and len(ops) > limit:
            raise errors.state_too_many_operations(len(ops), limit)
        markers: list[SetOp] = []
        if entry.outbox is not None and self.outbox is not None:
            # Published to the internal topic before anything is written: a failure stops here.
            ops, markers = await self.outbox.stage(entry, entry.outbox, ops, "")
        try:
            store_ops: list[Operation] = [
                self._set_op(prefix, op) if isinstance(op, SaveItem) else self._delete_op(prefix, op)
                for op in ops
            ]
            store_ops.extend(markers)
            await entry.call(lambda: target.transact(store_ops))
        except (ETagMismatch, ETagInvalid) as exc:
            key = exc.key[len(prefix) :] if exc.key.startswith(prefix) else exc.key
            raise errors.state_transaction_failed(f"{exc} (key {key!r})") from None
        except Exception as exc:
            if not isinstance(exc, OptionError):
                self._failed(store, "transact")
            raise errors.state_transaction_failed(str(exc)) from exc

    # --- query ---------------------------------------------------------------------------------

    async def query(self, entry: StoreEntry, body: bytes) -> QueryPage:
        store = entry.name
        if StateFeature.QUERY_API not in entry.store.features:
            raise errors.state_query_not_supported(store)
        try:
            query = parse_query(body)
            page = await cast(QueryableStateStore, entry.store).query(entry.prefix, query)
        except Exception as exc:  # QueryError or a store failure: both are ERR_STATE_QUERY
            raise errors.state_query_failed(store, exc) from None
        cut = len(entry.prefix)
        for result in page.results:
            result.key = result.key[cut:]
        return page


def _encrypt_at_rest(component: LoadedComponent, store: StateStore) -> StateStore:
    """The store wrapped with state encryption when primaryEncryptionKey is set."""
    metadata = component.metadata
    if not metadata["primaryEncryptionKey"] and not metadata["secondaryEncryptionKey"]:
        return store
    from components.state.encryption import EncryptedStateStore, encryption_keys

    resource = component.resource
    try:
        primary, secondary = encryption_keys(metadata, {r.field: r.name for r in resource.secret_refs})
    except MetadataError as exc:
        raise ComponentProblem(str(exc)) from None
    log.info("state store %s encrypts values at rest (key %s)", resource.name, primary.name)
    return EncryptedStateStore(store, primary, secondary)


async def _capture(awaitable: object) -> BaseException | None:
    try:
        await awaitable  # type: ignore[misc]
    except Exception as exc:
        return exc
    return None

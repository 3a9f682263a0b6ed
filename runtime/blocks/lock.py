"""The distributed lock building block: request checks in daprd's order, key naming, errors.

It talks to stores only through ``components.lock.base.LockStore``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, cast

from components.lock.base import LockStore, UnlockStatus
from runtime import errors
from runtime.blocks.base import BlockContext, ComponentProblem, LoadedComponent
from runtime.errors import APIError

log = logging.getLogger("pillion.lock")
_SEPARATOR = "||"


@dataclass(frozen=True, slots=True)
class LockEntry:
    store: LockStore
    # Put between "lock||" and the resource id, "" for none.
    prefix: str


def lock_key_prefix(strategy: str, app_id: str, store_name: str) -> str:
    """daprd's lock ``keyPrefix`` rules: ``lock||<prefix>||<resourceId>``."""
    strategy = strategy.lower()
    if _SEPARATOR in strategy:
        raise ValueError(f"keyPrefix {strategy!r} must not contain '||'")
    if strategy == "none":
        return ""
    if strategy == "name":
        return store_name
    if strategy == "appid":
        return app_id
    return strategy


class LockBlock:
    kind: ClassVar[str] = "lock"

    def __init__(self, app_id: str) -> None:
        self._app_id = app_id
        self._stores: dict[str, LockEntry] = {}

    # --- the component life cycle (runtime.blocks.base.BuildingBlock) -------------------------------

    @classmethod
    def create(cls, context: BlockContext) -> LockBlock:
        return cls(context.app_id)

    def build(self, component: LoadedComponent) -> LockEntry:
        strategy = str(component.metadata["keyPrefix"])
        try:
            prefix = lock_key_prefix(strategy, self._app_id, component.resource.name)
        except ValueError as exc:
            raise ComponentProblem(str(exc)) from None
        return LockEntry(cast("LockStore", component.instance), prefix)

    def capabilities(self, entry: LockEntry) -> list[str]:
        return []

    def install(self, name: str, entry: LockEntry | None) -> None:
        if entry is None:
            self._stores.pop(name, None)
        else:
            self._stores[name] = entry

    # --- the API ------------------------------------------------------------------------------

    async def try_lock(self, store: str, resource_id: str, owner: str, expiry_seconds: int) -> bool:
        if expiry_seconds <= 0:
            raise errors.lock_expiry_not_positive(store)
        entry = self._find(store, resource_id, owner)
        key = self._key(entry, resource_id, errors.lock_try_failed)
        try:
            return await entry.store.try_lock(key, owner, expiry_seconds)
        except Exception as exc:
            log.warning("lock store %s: lock failed: %s", store, exc)
            raise errors.lock_try_failed(str(exc) or type(exc).__name__) from None

    async def unlock(self, store: str, resource_id: str, owner: str) -> UnlockStatus:
        entry = self._find(store, resource_id, owner)
        key = self._key(entry, resource_id, errors.lock_unlock_failed)
        try:
            return await entry.store.unlock(key, owner)
        except Exception as exc:
            log.warning("lock store %s: unlock failed: %s", store, exc)
            raise errors.lock_unlock_failed(str(exc) or type(exc).__name__) from None

    def _find(self, store: str, resource_id: str, owner: str) -> LockEntry:
        if not self._stores:
            raise errors.lock_store_not_configured()
        if not resource_id:
            raise errors.lock_resource_id_empty(store)
        if not owner:
            raise errors.lock_owner_empty(store)
        entry = self._stores.get(store)
        if entry is None:
            raise errors.lock_store_not_found(store)
        return entry

    @staticmethod
    def _key(entry: LockEntry, resource_id: str, failure: Callable[[object], APIError]) -> str:
        if _SEPARATOR in resource_id:
            raise failure(f"input key/keyPrefix '{resource_id}' can't contain '{_SEPARATOR}'")
        if entry.prefix:
            return f"lock{_SEPARATOR}{entry.prefix}{_SEPARATOR}{resource_id}"
        return f"lock{_SEPARATOR}{resource_id}"

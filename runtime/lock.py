"""The distributed lock building block: request checks in daprd's order, key naming, errors.

It talks to stores only through ``components.lock.base.LockStore``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from components.lock.base import LockStore, UnlockStatus
from runtime.errors import APIError, malformed

if TYPE_CHECKING:
    from runtime.app_channel import AppChannel
    from runtime.resources import ComponentResource

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
    def __init__(self, app_id: str) -> None:
        self._app_id = app_id
        self._stores: dict[str, LockEntry] = {}

    # --- the sidecar's side (runtime.blocks.PluggableBlock) -----------------------------------

    def entry(self, resource: ComponentResource, instance: Any, metadata: dict[str, Any]) -> LockEntry:
        return LockEntry(instance, lock_key_prefix(str(metadata["keyPrefix"]), self._app_id, resource.name))

    def put(self, name: str, entry: LockEntry) -> None:
        self._stores[name] = entry

    def remove(self, name: str) -> None:
        self._stores.pop(name, None)

    async def app_ready(self, channel: AppChannel | None) -> None:
        return None

    async def stop(self) -> None:
        return None

    # --- the API ------------------------------------------------------------------------------

    async def try_lock(self, store: str, resource_id: str, owner: str, expiry_seconds: int) -> bool:
        if expiry_seconds <= 0:
            raise malformed(f"ExpiryInSeconds is not positive in lock store {store}")
        entry = self._find(store, resource_id, owner)
        key = self._key(entry, resource_id, "ERR_TRY_LOCK", "failed to try acquiring lock")
        try:
            return await entry.store.try_lock(key, owner, expiry_seconds)
        except Exception as exc:
            raise _failure("ERR_TRY_LOCK", "failed to try acquiring lock", exc) from None

    async def unlock(self, store: str, resource_id: str, owner: str) -> UnlockStatus:
        entry = self._find(store, resource_id, owner)
        key = self._key(entry, resource_id, "ERR_UNLOCK", "failed to release lock")
        try:
            return await entry.store.unlock(key, owner)
        except Exception as exc:
            raise _failure("ERR_UNLOCK", "failed to release lock", exc) from None

    def _find(self, store: str, resource_id: str, owner: str) -> LockEntry:
        if not self._stores:
            raise APIError(500, "ERR_LOCK_STORE_NOT_CONFIGURED", "lock store is not configured")
        if not resource_id:
            raise malformed(f"ResourceId is empty in lock store {store}")
        if not owner:
            raise malformed(f"LockOwner is empty in lock store {store}")
        entry = self._stores.get(store)
        if entry is None:
            raise APIError(400, "ERR_LOCK_STORE_NOT_FOUND", f"lock store {store} not found")
        return entry

    @staticmethod
    def _key(entry: LockEntry, resource_id: str, code: str, what: str) -> str:
        if _SEPARATOR in resource_id:
            problem = f"input key/keyPrefix '{resource_id}' can't contain '{_SEPARATOR}'"
            raise APIError(500, code, f"{what}: {problem}")
        if entry.prefix:
            return f"lock{_SEPARATOR}{entry.prefix}{_SEPARATOR}{resource_id}"
        return f"lock{_SEPARATOR}{resource_id}"


def _failure(code: str, what: str, exc: Exception) -> APIError:
    log.warning("%s: %s", what, exc)
    return APIError(500, code, f"{what}: {str(exc) or type(exc).__name__}")

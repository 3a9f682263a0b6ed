"""What a lock store implements: try to take a named lock for an owner, and release it."""

from __future__ import annotations

from enum import IntEnum
from typing import Protocol

from components.base import Component


class UnlockStatus(IntEnum):
    """Dapr's unlock answer, sent to clients as its number."""

    SUCCESS = 0
    LOCK_DOES_NOT_EXIST = 1
    LOCK_BELONGS_TO_OTHERS = 2
    INTERNAL_ERROR = 3


class LockStore(Component, Protocol):
    async def try_lock(self, key: str, owner: str, expiry_seconds: int) -> bool:
        """Take ``key`` for ``owner`` for ``expiry_seconds`` unless anyone (the same owner
        included) holds it; no waiting, no renewal."""
        ...

    async def unlock(self, key: str, owner: str) -> UnlockStatus:
        """Release ``key`` if ``owner`` holds it, in one atomic step."""
        ...

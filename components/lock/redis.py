"""``lock.redis``: a lock is a Redis string holding its owner, with the lock's expiry as its TTL.

Taking it is one ``SET key owner NX EX seconds``; releasing it is one Lua script that deletes the
key only if it still holds the caller's owner, so a lock that expired and was taken by someone
else is never released by its former owner. Keys and values are those daprd's component uses.
"""

from __future__ import annotations

from typing import Any, ClassVar

from components.base import ComponentContext
from components.lock.base import UnlockStatus
from components.metadata import MetadataSchema
from components.redis_common import CONNECTION_FIELDS, RedisSettings, build_client

# 1: no such lock; 2: someone else's; 0: released.
_UNLOCK_SCRIPT = """
local owner = redis.call('GET', KEYS[1])
if not owner then return 1 end
if owner ~= ARGV[1] then return 2 end
redis.call('DEL', KEYS[1])
return 0
"""


class RedisLockStore:
    """Distributed lock in one Redis node (or behind Redis Sentinel)."""

    schema: ClassVar[MetadataSchema] = CONNECTION_FIELDS

    def __init__(self, metadata: dict[str, Any], context: ComponentContext) -> None:
        settings = RedisSettings.from_metadata(metadata)
        self._failover = bool(metadata["failover"])
        self._where = f"{settings.address} (db {settings.db})"
        self._client = build_client(settings)
        self._unlock = self._client.register_script(_UNLOCK_SCRIPT)

    async def init(self) -> None:
        try:
            replication = await self._client.info("replication")
        except Exception as exc:
            raise RuntimeError(f"cannot reach Redis at {self._where}: {exc}") from None
        # A lock written to a master is lost if it fails over before a replica has it: daprd
        # refuses such a server unless Sentinel manages it (failover: true).
        if int(replication.get("connected_slaves", 0)) > 0 and not self._failover:
            raise RuntimeError(
                f"Redis at {self._where} has replicas: a lock could be lost on failover; "
                "use a server without replicas, or failover: true with Sentinel"
            )

    async def close(self) -> None:
        await self._client.aclose()

    async def ping(self) -> None:
        await self._client.ping()

    async def try_lock(self, key: str, owner: str, expiry_seconds: int) -> bool:
        return bool(await self._client.set(key, owner, nx=True, ex=expiry_seconds))

    async def unlock(self, key: str, owner: str) -> UnlockStatus:
        return UnlockStatus(int(await self._unlock(keys=[key], args=[owner])))

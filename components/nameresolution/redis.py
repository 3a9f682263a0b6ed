"""``nameresolution.redis`` (Pillion's own): sidecars on several machines share a Redis.

Each app id is one sorted set, ``<keyPrefix><namespace>||<app id>``: members are sidecar addresses,
scores the Redis server's clock at their last heartbeat (so the hosts' clocks need not agree).
A member older than ``updateInterval`` is ignored and removed by the next heartbeat of any sidecar
of that app id; a stopping sidecar removes itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, ClassVar

from redis.exceptions import RedisError

from components.base import ComponentContext
from components.metadata import FieldType, MetadataError, MetadataField, MetadataSchema
from components.nameresolution.base import Instance
from components.redis_common import CONNECTION_FIELDS, RedisSettings, build_client

log = logging.getLogger("pillion.nameresolution")

# Server time in seconds (float), then the members refreshed within ARGV[1] seconds.
_LIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')
"""
# Refresh one member and forget the stale ones; the key outlives its last member a little.
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) * 2))
return 1
"""


class RedisNameResolver:
    schema: ClassVar[MetadataSchema] = CONNECTION_FIELDS + MetadataSchema(
        (
            MetadataField(
                "updateInterval",
                FieldType.DURATION,
                default=5.0,
                description="How often a sidecar refreshes its entry; an entry older than this is ignored.",
            ),
            MetadataField(
                "keyPrefix", default="pillion||nr||", description="Prefix of the sorted sets' keys."
            ),
        )
    )

    def __init__(self, metadata: dict[str, Any], context: ComponentContext) -> None:
        self.update_interval = float(metadata["updateInterval"])
        if self.update_interval < 1:
            raise MetadataError("updateInterval", "must be at least 1s")
        self.prefix = str(metadata["keyPrefix"])
        self._client = build_client(RedisSettings.from_metadata(metadata), client_name="pillion-nr")
        self._live = self._client.register_script(_LIVE)
        self._beat = self._client.register_script(_HEARTBEAT)
        self._instance: Instance | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    def _key(self, app_id: str, namespace: str) -> str:
        return f"{self.prefix}{namespace}||{app_id}"

    async def init(self) -> None:
        await self._client.ping()

    async def register(self, instance: Instance) -> None:
        self._instance = instance
        await self._refresh(instance)
        self._heartbeat = asyncio.create_task(self._keep_fresh(instance))

    async def _refresh(self, instance: Instance) -> None:
        key = self._key(instance.app_id, instance.namespace)
        await self._beat(keys=[key], args=[instance.address, self.update_interval])

    async def _keep_fresh(self, instance: Instance) -> None:
        while True:
            await asyncio.sleep(self.update_interval / 3)
            try:
                await self._refresh(instance)
            except (RedisError, OSError) as exc:
                log.warning("refreshing the name-resolution entry failed: %s", exc)

    async def resolve(self, app_id: str, namespace: str) -> list[str]:
        members = await self._live(keys=[self._key(app_id, namespace)], args=[self.update_interval])
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        if self._instance is not None:
            with contextlib.suppress(RedisError, OSError):
                key = self._key(self._instance.app_id, self._instance.namespace)
                await asyncio.wait_for(self._client.zrem(key, self._instance.address), 2)
        await self._client.aclose()

    async def ping(self) -> None:
        await self._client.ping()

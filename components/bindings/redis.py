"""``bindings.redis``: an output binding on Redis strings.

Operations on the key in metadata ``key``: ``create`` (SET, with metadata ``ttlInSeconds`` as its
expiry, set in the same command), ``get`` (GET, or GETDEL with metadata ``delete: "true"``; a missing
key is an empty answer), ``delete`` (DEL) and ``increment`` (INCR, with the optional expiry in one
transaction).
"""

from __future__ import annotations

from typing import Any, ClassVar

from components.base import ComponentContext
from components.bindings.base import OUTPUT, BindingError, InvokeRequest, InvokeResponse
from components.metadata import MetadataSchema
from components.redis_common import CONNECTION_FIELDS, RedisSettings, build_client


def _ttl(metadata: dict[str, str]) -> int | None:
    raw = metadata.get("ttlInSeconds")
    if not raw:
        return None
    try:
        ttl = int(raw)
    except ValueError:
        raise BindingError(f"ttlInSeconds {raw!r} is not an integer") from None
    return ttl if ttl > 0 else None


class RedisBinding:
    """Output binding on Redis strings (`create`, `get`, `delete`, `increment`)."""

    schema: ClassVar[MetadataSchema] = CONNECTION_FIELDS
    directions: ClassVar[frozenset[str]] = frozenset({OUTPUT})
    operations: ClassVar[tuple[str, ...]] = ("create", "get", "delete", "increment")

    def __init__(self, metadata: dict[str, Any], context: ComponentContext) -> None:
        settings = RedisSettings.from_metadata(metadata)
        self._where = f"{settings.address} (db {settings.db})"
        self._client = build_client(settings)

    async def init(self) -> None:
        try:
            await self._client.ping()
        except Exception as exc:
            raise RuntimeError(f"cannot reach Redis at {self._where}: {exc}") from None

    async def close(self) -> None:
        await self._client.aclose()

    async def ping(self) -> None:
        await self._client.ping()

    async def invoke(self, request: InvokeRequest) -> InvokeResponse:
        key = request.metadata.get("key", "")
        if not key:
            raise BindingError("redis binding: missing key in request metadata")
        client = self._client
        operation = request.operation
        if operation == "get":
            if request.metadata.get("delete") == "true":
                value = await client.getdel(key)
            else:
                value = await client.get(key)
            if value is None:
                return InvokeResponse(b"")
            return InvokeResponse(value if isinstance(value, bytes) else value.encode())
        if operation == "create":
            await client.set(key, request.data, ex=_ttl(request.metadata))
        elif operation == "delete":
            await client.delete(key)
        else:
            ttl = _ttl(request.metadata)
            async with client.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                if ttl is not None:
                    pipe.expire(key, ttl)
                await pipe.execute()
        return InvokeResponse()

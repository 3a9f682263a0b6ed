"""``configuration.redis``: configuration items as Redis strings, changes seen through keyspace
notifications.

Each item is a plain string key holding ``<value>||<version>`` (the version part is optional), the
layout of daprd's component, so both read the same data. Keys of another type are skipped.

Subscribing needs keyspace notifications for string and generic commands (``Kg$xe``). Like daprd,
the component turns them on with ``CONFIG SET`` when they are off, adding flags and never removing
any; with ``configureKeyspaceEvents: false`` it only checks them and a subscription fails with a
message saying what to set (for a shared or managed Redis where changing its configuration is not
wanted or not allowed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, ClassVar

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError, ResponseError

from components.base import ComponentContext
from components.configuration.base import ConfigurationItem, UpdateHandler
from components.metadata import FieldType, MetadataField, MetadataSchema
from components.redis_common import CONNECTION_FIELDS, RedisSettings, build_client

log = logging.getLogger("pillion.configuration.redis")
_SEPARATOR = "||"
_NEEDED_EVENTS = "Kg$xe"
# 'A' stands for every class of event but keyspace/keyevent and key-miss.
_ALL_CLASSES = "g$lshzxetd"


def parse_item(raw: bytes | str) -> ConfigurationItem:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    value, _, rest = text.partition(_SEPARATOR)
    return ConfigurationItem(value, rest.split(_SEPARATOR, 1)[0])


def missing_events(current: str) -> str:
    """The notification flags ``current`` lacks for subscriptions to work."""
    have = set(current.replace("A", _ALL_CLASSES))
    return "".join(flag for flag in _NEEDED_EVENTS if flag not in have)


class _KeyspaceWatch:
    def __init__(self, pubsub: PubSub, reader: asyncio.Task[None]) -> None:
        self._pubsub = pubsub
        self._reader = reader

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.aclose()


class RedisConfigurationStore:
    """Configuration items in Redis strings (`value||version`), pushed on change."""

    schema: ClassVar[MetadataSchema] = CONNECTION_FIELDS + MetadataSchema(
        (
            MetadataField(
                "configureKeyspaceEvents",
                FieldType.BOOLEAN,
                default=True,
                description="Pillion: turn on the keyspace notifications subscriptions need "
                "(`CONFIG SET notify-keyspace-events`, adding `Kg$xe` to what is set), as daprd does; "
                "false only checks them.",
            ),
        )
    )

    def __init__(self, metadata: dict[str, Any], context: ComponentContext) -> None:
        settings = RedisSettings.from_metadata(metadata)
        self._db = settings.db
        self._where = f"{settings.address} (db {settings.db})"
        self._client = build_client(settings)
        # Subscriptions hold a connection each, waiting on the server: not from the bounded pool.
        self._listener = build_client(settings, blocking_for=3600)
        self._configure: bool = metadata["configureKeyspaceEvents"]
        self._events_checked = False

    async def init(self) -> None:
        try:
            await self._client.ping()
        except Exception as exc:
            raise RuntimeError(f"cannot reach Redis at {self._where}: {exc}") from None

    async def close(self) -> None:
        await self._client.aclose()
        await self._listener.aclose()

    async def ping(self) -> None:
        await self._client.ping()

    async def get(self, keys: list[str], metadata: dict[str, str]) -> dict[str, ConfigurationItem]:
        if not keys:
            keys = [
                k.decode() if isinstance(k, bytes) else k async for k in self._client.scan_iter(count=1000)
            ]
        if not keys:
            return {}
        async with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
            values = await pipe.execute(raise_on_error=False)
        items: dict[str, ConfigurationItem] = {}
        for key, value in zip(keys, values, strict=True):
            if isinstance(value, ResponseError):
                continue  # not a string: not a configuration item
            if isinstance(value, Exception):
                raise value
            if value is None:
                continue
            item = parse_item(value)
            if item.value:
                items[key] = item
        return items

    async def _ensure_events(self) -> None:
        if self._events_checked:
            return
        found = (await self._client.config_get("notify-keyspace-events")).get("notify-keyspace-events")
        current = found.decode() if isinstance(found, bytes) else str(found or "")
        lacking = missing_events(current)
        if lacking:
            if not self._configure:
                raise RuntimeError(
                    f"Redis at {self._where} sends no keyspace notifications for {lacking!r}: set "
                    f"notify-keyspace-events to include {_NEEDED_EVENTS} (or configureKeyspaceEvents: true)"
                )
            try:
                await self._client.config_set("notify-keyspace-events", current + lacking)
            except ResponseError as exc:
                raise RuntimeError(
                    f"cannot turn on keyspace notifications on Redis at {self._where} ({exc}); set "
                    f"notify-keyspace-events to include {_NEEDED_EVENTS} on the server"
                ) from None
            log.info("turned on keyspace notifications %r on Redis at %s", lacking, self._where)
        self._events_checked = True

    async def subscribe(
        self, keys: list[str], metadata: dict[str, str], handler: UpdateHandler
    ) -> _KeyspaceWatch:
        await self._ensure_events()
        prefix = f"__keyspace@{self._db}__:"
        pubsub = self._listener.pubsub(ignore_subscribe_messages=True)
        try:
            if keys:
                await pubsub.subscribe(*(prefix + key for key in keys))
            else:
                await pubsub.psubscribe(prefix + "*")
        except BaseException:
            await pubsub.aclose()
            raise
        reader = asyncio.create_task(self._read(pubsub, prefix, handler))
        return _KeyspaceWatch(pubsub, reader)

    async def _read(self, pubsub: PubSub, prefix: str, handler: UpdateHandler) -> None:
        while True:
            try:
                message = await pubsub.get_message(timeout=30)
            except (RedisError, OSError) as exc:
                log.warning(
                    "configuration subscription on %s lost its connection (%s); resubscribing",
                    self._where,
                    exc,
                )
                await asyncio.sleep(1)
                continue  # the next read reconnects and subscribes again
            if message is None:
                continue
            channel = message["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else channel
            key = channel[len(prefix) :]
            try:
                value = await self._client.get(key)
            except ResponseError:
                continue  # the key became something other than a string
            except (RedisError, OSError) as exc:
                log.warning("cannot read configuration key %r after its change: %s", key, exc)
                continue
            item = parse_item(value) if value is not None else ConfigurationItem()
            try:
                await handler({key: item})
            except Exception as exc:
                log.warning("configuration update of %r was not delivered: %s", key, exc)

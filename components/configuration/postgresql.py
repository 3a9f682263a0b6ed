"""``configuration.postgresql`` (also ``configuration.postgres``): configuration items in a table
of the user's, changes pushed by a trigger through ``NOTIFY``.

The table has daprd's columns ``key``, ``value``, ``version`` and ``metadata`` (JSON) and must exist.
Where a key has several rows the one with the highest numeric version wins. Subscribing runs
``LISTEN <notifyChannel>`` on a connection of its own; a trigger the user installs sends
``pg_notify(<channel>, '{"data": {"key": .., "value": .., "version": .., "metadata": {..}}}')``
per change (docs/configuration.md has one). Notifications for other keys are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from typing import Any, ClassVar

import asyncpg

from components.base import ComponentContext
from components.configuration.base import ConfigurationItem, UpdateHandler
from components.metadata import MetadataError, MetadataField, MetadataSchema
from components.postgresql_common import CONNECTION_FIELDS, PostgresSettings, create_pool

log = logging.getLogger("pillion.configuration.postgresql")
_NAME = re.compile(r"^[a-z0-9_.]{1,64}$")


def _version_rank(version: str) -> tuple[int, float]:
    try:
        return (1, float(version))
    except ValueError:
        return (0, 0.0)


def _item(value: Any, version: Any, metadata: Any) -> ConfigurationItem:
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata) if metadata else {}
        except ValueError:
            metadata = {}
    fields = {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}
    return ConfigurationItem(
        "" if value is None else str(value), "" if version is None else str(version), fields
    )


class _ListenWatch:
    def __init__(
        self, connection: asyncpg.Connection, channel: str, callback: Any, worker: asyncio.Task[None]
    ) -> None:
        self._connection = connection
        self._channel = channel
        self._callback = callback
        self._worker = worker

    async def close(self) -> None:
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        with contextlib.suppress(Exception):
            await self._connection.remove_listener(self._channel, self._callback)
        with contextlib.suppress(Exception):
            await self._connection.close(timeout=5)


class PostgreSQLConfigurationStore:
    """Configuration items in a PostgreSQL table, pushed on change by a trigger's NOTIFY."""

    schema: ClassVar[MetadataSchema] = CONNECTION_FIELDS + MetadataSchema(
        (
            MetadataField(
                "table",
                required=True,
                description="The table of items (`key`, `value`, `version`, `metadata`); it must exist. "
                "Lower-case letters, digits, `_` and `.` (schema.table).",
            ),
            MetadataField(
                "notifyChannel",
                default="",
                aliases=("pgNotifyChannel",),
                description="The channel the table's trigger notifies; needed to subscribe.",
            ),
        )
    )

    def __init__(self, metadata: dict[str, Any], context: ComponentContext) -> None:
        self._settings = PostgresSettings.from_metadata(metadata)
        self._table: str = metadata["table"]
        if not _NAME.match(self._table):
            raise MetadataError("table", f"{self._table!r} is not a valid table name")
        self._channel: str = metadata["notifyChannel"]
        if self._channel and not _NAME.match(self._channel):
            raise MetadataError("notifyChannel", f"{self._channel!r} is not a valid channel name")
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None

    async def init(self) -> None:
        self._pool = await create_pool(self._settings)
        exists = await self._pool.fetchval("SELECT to_regclass($1) IS NOT NULL", self._table)
        if not exists:
            await self._pool.close()
            raise RuntimeError(f"postgreSQL configuration table '{self._table}' does not exist")

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def ping(self) -> None:
        assert self._pool is not None
        await self._pool.fetchval("SELECT 1")

    async def get(self, keys: list[str], metadata: dict[str, str]) -> dict[str, ConfigurationItem]:
        assert self._pool is not None
        query = f"SELECT key, value, version, metadata FROM {self._table}"
        if keys:
            rows = await self._pool.fetch(query + " WHERE key = ANY($1::text[])", keys)
        else:
            rows = await self._pool.fetch(query)
        best: dict[str, tuple[tuple[int, float], ConfigurationItem]] = {}
        for row in rows:
            item = _item(row["value"], row["version"], row["metadata"])
            rank = _version_rank(item.version)
            key = str(row["key"])
            if key not in best or rank > best[key][0]:
                best[key] = (rank, item)
        return {key: item for key, (_, item) in best.items()}

    async def subscribe(
        self, keys: list[str], metadata: dict[str, str], handler: UpdateHandler
    ) -> _ListenWatch:
        channel = self._channel or metadata.get("pgNotifyChannel", "")
        if not channel:
            raise RuntimeError("notifyChannel is not set in the component's metadata")
        if not _NAME.match(channel):
            raise RuntimeError(f"{channel!r} is not a valid channel name")
        wanted = frozenset(keys)
        queue: asyncio.Queue[str] = asyncio.Queue()

        def on_notify(connection: Any, pid: int, name: str, payload: object) -> None:
            queue.put_nowait(str(payload))

        connection = await asyncpg.connect(
            self._settings.dsn, timeout=self._settings.connect_timeout, command_timeout=self._settings.timeout
        )
        try:
            await connection.add_listener(channel, on_notify)
        except BaseException:
            await connection.close()
            raise
        worker = asyncio.create_task(self._deliver(queue, wanted, handler))
        return _ListenWatch(connection, channel, on_notify, worker)

    @staticmethod
    async def _deliver(queue: asyncio.Queue[str], wanted: frozenset[str], handler: UpdateHandler) -> None:
        while True:
            payload = await queue.get()
            try:
                data = json.loads(payload)["data"]
                key = str(data["key"])
            except (ValueError, KeyError, TypeError):
                log.warning('ignored a configuration notification that is not {"data": {"key": ...}}')
                continue
            if wanted and key not in wanted:
                continue
            item = _item(data.get("value"), data.get("version"), data.get("metadata"))
            try:
                await handler({key: item})
            except Exception as exc:
                log.warning("configuration update of %r was not delivered: %s", key, exc)

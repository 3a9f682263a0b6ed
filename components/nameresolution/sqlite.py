"""``nameresolution.sqlite``: sidecars on one machine share a SQLite file.

Same table layout and metadata as Dapr's resolver of that name: each sidecar holds one row in
``hosts`` (a unique index on the address lets a restarted sidecar take over its old row), refreshes
``last_update`` every ``updateInterval - timeout - 1s`` and deletes the row when it stops. A row not
refreshed within ``updateInterval`` is ignored (a SIGKILLed sidecar drops out within that time)
and deleted by the sweep that one sidecar runs per ``cleanupInterval``. Pillion's differences,
written in docs/invocation.md: a lost row is registered again instead of stopping the sidecar,
every live address is returned (the runtime balances between them), and the sweep deletes the
stale rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
import uuid
from typing import Any, ClassVar

from components.base import ComponentContext
from components.metadata import FieldType, MetadataError, MetadataField, MetadataSchema
from components.nameresolution.base import Instance
from components.sqlite_common import SQLiteDatabase

log = logging.getLogger("pillion.nameresolution")
_MIGRATION_LEVEL = "1"


def _identifier(name: str, field: str) -> str:
    if not name.replace("_", "").isalnum():
        raise MetadataError(field, f"{name!r} is not a valid table name (letters, digits and _ only)")
    return name


class SQLiteNameResolver:
    schema: ClassVar[MetadataSchema] = MetadataSchema(
        (
            MetadataField(
                "connectionString",
                required=True,
                description="The database file shared by every sidecar on the machine.",
            ),
            MetadataField(
                "updateInterval",
                FieldType.DURATION,
                default=5.0,
                description="How often a sidecar refreshes its row; a row older than this is ignored.",
            ),
            MetadataField(
                "timeout", FieldType.DURATION, default=1.0, description="Timeout for one database call."
            ),
            MetadataField("tableName", default="hosts", description="Table of registrations."),
            MetadataField("metadataTableName", default="metadata", description="Table of settings."),
            MetadataField(
                "cleanupInterval",
                FieldType.DURATION,
                default=3600.0,
                description="How often stale rows are deleted (one sidecar does it per interval).",
            ),
            MetadataField(
                "busyTimeout",
                FieldType.DURATION,
                default=0.8,
                description="How long to wait for a lock held by another process.",
            ),
            MetadataField(
                "disableWAL",
                FieldType.BOOLEAN,
                default=False,
                description="Use a rollback journal instead of write-ahead logging.",
            ),
        )
    )

    def __init__(self, metadata: dict[str, Any], context: ComponentContext) -> None:
        self.update_interval = float(metadata["updateInterval"])
        self.timeout = float(metadata["timeout"])
        if self.timeout < 1:
            raise MetadataError("timeout", "must be at least 1s")
        if self.update_interval < self.timeout + 1:
            raise MetadataError("updateInterval", "must be at least timeout + 1s")
        self.cleanup_interval = float(metadata["cleanupInterval"])
        self.table = _identifier(str(metadata["tableName"]), "tableName")
        self.metadata_table = _identifier(str(metadata["metadataTableName"]), "metadataTableName")
        target = str(metadata["connectionString"])
        if "_pragma=" in target:
            raise MetadataError("connectionString", "must not set _pragma options; use the metadata fields")
        if target == ":memory:" or "mode=memory" in target:
            log.warning("nameresolution.sqlite on an in-memory database: other sidecars cannot see this one")
        self._db = SQLiteDatabase(
            target,
            thread_name="pillion-nr-sqlite",
            timeout=self.timeout,
            busy_timeout=float(metadata["busyTimeout"]),
            wal=not metadata["disableWAL"],
            setup=self._migrate,
            closed_message="the name-resolution database is closed",
        )
        self._registration: tuple[str, Instance] | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.metadata_table} "
                "(key TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL)"
            )
            row = conn.execute(
                f"SELECT value FROM {self.metadata_table} WHERE key = 'nr-migrations'"
            ).fetchone()
            if row is None:
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {self.table} (registration_id TEXT NOT NULL PRIMARY KEY, "
                    "address TEXT NOT NULL, app_id TEXT NOT NULL, namespace TEXT NOT NULL, "
                    "last_update INTEGER NOT NULL)"
                )
                conn.execute(
                    f"CREATE UNIQUE INDEX IF NOT EXISTS {self.table}_address_idx ON {self.table} (address)"
                )
                conn.execute(
                    f"CREATE INDEX IF NOT EXISTS {self.table}_last_update_idx ON {self.table} (last_update)"
                )
                conn.execute(
                    f"INSERT INTO {self.metadata_table} (key, value) VALUES ('nr-migrations', ?)",
                    (_MIGRATION_LEVEL,),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def init(self) -> None:
        await self._db.open()

    async def register(self, instance: Instance) -> None:
        registration_id = str(uuid.uuid4())
        await self._db.run(self._insert, registration_id, instance)
        self._registration = (registration_id, instance)
        self._heartbeat = asyncio.create_task(self._keep_fresh())

    def _insert(self, registration_id: str, instance: Instance) -> None:
        # Dapr stores an empty namespace: names are looked up by app id alone.
        self._db.connection().execute(
            f"REPLACE INTO {self.table} (registration_id, address, app_id, namespace, last_update) "
            "VALUES (?, ?, ?, '', ?)",
            (registration_id, instance.address, instance.app_id, int(time.time())),
        )

    def _refresh(self, registration_id: str, instance: Instance) -> bool:
        cursor = self._db.connection().execute(
            f"UPDATE {self.table} SET last_update = ? WHERE registration_id = ? AND address = ?",
            (int(time.time()), registration_id, instance.address),
        )
        return cursor.rowcount > 0

    def _sweep(self) -> int:
        conn = self._db.connection()
        now = int(time.time())
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                f"SELECT value FROM {self.metadata_table} WHERE key = 'nr-last-cleanup'"
            ).fetchone()
            if row is not None and now - int(row[0]) < self.cleanup_interval:
                conn.execute("COMMIT")
                return 0
            conn.execute(
                f"REPLACE INTO {self.metadata_table} (key, value) VALUES ('nr-last-cleanup', ?)", (str(now),)
            )
            removed = conn.execute(
                f"DELETE FROM {self.table} WHERE ? - last_update >= ?", (now, int(self.update_interval))
            ).rowcount
            conn.execute("COMMIT")
            return removed
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def _keep_fresh(self) -> None:
        assert self._registration is not None
        registration_id, instance = self._registration
        every = max(self.update_interval - self.timeout - 1, 0.5)
        while True:
            await asyncio.sleep(every)
            try:
                if not await self._db.run(self._refresh, registration_id, instance):
                    # Dapr stops the sidecar here; registering again keeps it reachable instead.
                    log.warning("the name-resolution row of %s was lost; registering again", instance.app_id)
                    await self._db.run(self._insert, registration_id, instance)
                removed = await self._db.run(self._sweep)
                if removed:
                    log.debug("deleted %d stale name-resolution rows", removed)
            except (sqlite3.Error, TimeoutError) as exc:
                log.warning("refreshing the name-resolution row failed: %s", exc)

    def _live(self, app_id: str) -> list[str]:
        rows = (
            self._db.connection()
            .execute(
                f"SELECT address FROM {self.table} WHERE app_id = ? AND ? - last_update < ?",
                (app_id, int(time.time()), int(self.update_interval)),
            )
            .fetchall()
        )
        return [str(row[0]) for row in rows]

    async def resolve(self, app_id: str, namespace: str) -> list[str]:
        # Namespaces are not stored: on one machine an app id is one app, as in Dapr's resolver.
        return await self._db.run(self._live, app_id)

    def _delete(self, registration_id: str, instance: Instance) -> None:
        self._db.connection().execute(
            f"DELETE FROM {self.table} WHERE registration_id = ? AND address = ?",
            (registration_id, instance.address),
        )

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        if self._registration is not None:
            with contextlib.suppress(sqlite3.Error, TimeoutError):
                await self._db.run(self._delete, *self._registration)
            self._registration = None
        await self._db.close()

    async def ping(self) -> None:
        await self._db.run(lambda: self._db.connection().execute("SELECT 1").fetchone())

"""``lock.sqlite`` (Pillion's own): locks in one SQLite file, for the apps of one machine.

Every sidecar that names the same file shares the locks. Each lock is a row with its owner and the
wall-clock moment it expires; taking a lock is one statement that inserts the row or takes over an
expired one, and releasing it is one owner-checked statement, so two processes can never both hold
a lock. Expired rows read as absent and are swept now and then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
import time
from typing import Any, ClassVar

from components.base import ComponentContext
from components.lock.base import UnlockStatus
from components.metadata import FieldType, MetadataError, MetadataField, MetadataSchema
from components.periodic import sweep_forever
from components.sqlite_common import SQLiteDatabase, database_fields

log = logging.getLogger("pillion.lock.sqlite")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class SQLiteLockStore:
    """Locks shared by the sidecars of one machine through one SQLite file."""

    schema: ClassVar[MetadataSchema] = MetadataSchema(
        (
            MetadataField(
                "connectionString",
                default="",
                aliases=("url",),
                description="Path of the database file; default `locks.db` in the embedded stores' "
                "folder (`~/.pillion`, or `--data-dir`), shared by every app there.",
            ),
            MetadataField("tableName", default="locks", description="Table holding the locks."),
            *database_fields(busy_timeout=5.0),
            MetadataField(
                "cleanupInterval",
                FieldType.DURATION,
                default=300.0,
                description="How often expired locks are deleted; 0 turns the sweep off "
                "(an expired lock is free either way).",
            ),
        )
    )

    def __init__(self, metadata: dict[str, Any], context: ComponentContext) -> None:
        table: str = metadata["tableName"]
        if not _IDENTIFIER.match(table):
            raise MetadataError("tableName", f"{table!r} is not a valid table name")
        target: str = metadata["connectionString"] or str(context.shared_dir / "locks.db")
        self._table = table
        self._cleanup_every: float = metadata["cleanupInterval"]
        self._database = SQLiteDatabase(
            target,
            thread_name=f"sqlite-{context.name}",
            timeout=metadata["timeout"],
            busy_timeout=metadata["busyTimeout"],
            wal=not metadata["disableWAL"],
            setup=self._create_table,
            closed_message="the SQLite lock store is closed",
        )
        self._sql_take = (
            f"INSERT INTO {table} (key, owner, expires_at) VALUES (?, ?, ?) "
            f"ON CONFLICT(key) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at "
            f"WHERE {table}.expires_at <= ?"
        )
        self._sql_release = f"DELETE FROM {table} WHERE key = ? AND owner = ? AND expires_at > ?"
        self._sql_holder = f"SELECT owner FROM {table} WHERE key = ? AND expires_at > ?"
        self._cleaner: asyncio.Task[None] | None = None

    def _create_table(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self._table} "
            "(key TEXT NOT NULL PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL NOT NULL) WITHOUT ROWID"
        )

    async def init(self) -> None:
        await self._database.open()
        if self._cleanup_every > 0:
            self._cleaner = asyncio.create_task(
                sweep_forever(self._sweep, self._cleanup_every, "expired locks", log)
            )

    async def close(self) -> None:
        if self._cleaner is not None:
            self._cleaner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cleaner
        await self._database.close()

    async def ping(self) -> None:
        await self._database.run(self._database.connection().execute, "SELECT 1")

    async def try_lock(self, key: str, owner: str, expiry_seconds: int) -> bool:
        return await self._database.run(self._take, key, owner, expiry_seconds)

    async def unlock(self, key: str, owner: str) -> UnlockStatus:
        return await self._database.run(self._release, key, owner)

    def _take(self, key: str, owner: str, expiry_seconds: int) -> bool:
        now = time.time()
        cursor = self._database.connection().execute(self._sql_take, (key, owner, now + expiry_seconds, now))
        return cursor.rowcount == 1

    def _release(self, key: str, owner: str) -> UnlockStatus:
        db = self._database.connection()
        now = time.time()
        if db.execute(self._sql_release, (key, owner, now)).rowcount == 1:
            return UnlockStatus.SUCCESS
        # Not ours to release: tell why. A lock taken in between by another owner is "others'".
        row = db.execute(self._sql_holder, (key, now)).fetchone()
        return UnlockStatus.LOCK_DOES_NOT_EXIST if row is None else UnlockStatus.LOCK_BELONGS_TO_OTHERS

    async def _sweep(self) -> int:
        def sweep() -> int:
            db = self._database.connection()
            return db.execute(f"DELETE FROM {self._table} WHERE expires_at <= ?", (time.time(),)).rowcount

        return await self._database.run(sweep)

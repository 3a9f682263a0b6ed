"""``state.sqlite``: a durable store in one SQLite file, with the table layout of Dapr's store.

All SQLite work runs on one dedicated thread (SQLite connections are not shared across threads,
and the event loop must never block on disk). A Dapr ``state.sqlite`` database file can be opened
as it is.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import sqlite3
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from components.base import ComponentContext
from components.metadata import FieldType, MetadataError, MetadataField, MetadataSchema
from components.periodic import sweep_forever
from components.sqlite_common import SQLiteDatabase, database_fields
from components.state.base import (
    ANY_KEY,
    DeleteOp,
    ETagMismatch,
    KeyLimits,
    Operation,
    SetOp,
    StateFeature,
    StoredItem,
)
from components.state.query import Query, QueryPage, QueryResult, run_query

log = logging.getLogger("pillion.state.sqlite")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def _db_time(moment: datetime) -> str:
    # Dapr writes 'YYYY-MM-DD HH:MM:SS' (UTC); millisecond text sorts correctly against it.
    return moment.strftime(_TIME_FORMAT)[:-3]


def _parse_db_time(text: str | None) -> datetime | None:
    if not text:
        return None
    for fmt in (_TIME_FORMAT, "%Y-%m-%d %H:%M:%S"):
        with contextlib.suppress(ValueError):
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
    return None


class SQLiteStateStore:
    schema: ClassVar[MetadataSchema] = MetadataSchema(
        (
            MetadataField(
                "connectionString",
                required=True,
                aliases=("url",),
                description="Path of the database file, a `file:` URI, or `:memory:`. "
                "Relative paths are relative to the sidecar's working directory, as in Dapr.",
            ),
            MetadataField("tableName", default="state", description="Table holding the state."),
            MetadataField(
                "metadataTableName", default="metadata", description="Table holding the schema level."
            ),
            *database_fields(busy_timeout=2.0),
            MetadataField(
                "cleanupInterval",
                FieldType.DURATION,
                default=3600.0,
                aliases=("cleanupIntervalInSeconds",),
                description="How often expired rows are deleted; 0 turns the sweep off "
                "(expired rows read as missing either way). Dapr's default is off.",
            ),
        )
    )
    key_limits: ClassVar[KeyLimits] = ANY_KEY
    features: ClassVar[frozenset[StateFeature]] = frozenset(
        {StateFeature.ETAG, StateFeature.TRANSACTIONAL, StateFeature.TTL, StateFeature.QUERY_API}
    )
    max_operations: int | None = None

    def __init__(self, metadata: dict[str, Any], context: ComponentContext) -> None:
        for name in ("tableName", "metadataTableName"):
            if not _IDENTIFIER.match(metadata[name]):
                raise MetadataError(name, f"{metadata[name]!r} is not a valid table name")
        self._table: str = metadata["tableName"]
        self._meta_table: str = metadata["metadataTableName"]
        self._cleanup_every: float = metadata["cleanupInterval"]
        self._database = SQLiteDatabase(
            metadata["connectionString"],
            thread_name=f"sqlite-{context.name}",
            timeout=metadata["timeout"],
            busy_timeout=metadata["busyTimeout"],
            wal=not metadata["disableWAL"],
            setup=self._create_tables,
            closed_message="the SQLite state store is closed",
        )
        self._cleaner: asyncio.Task[None] | None = None
        self._prepare_statements()

    def _prepare_statements(self) -> None:
        t = self._table
        live = "(expiration_time IS NULL OR expiration_time > ?)"
        self._sql_get = f"SELECT value, is_binary, etag, expiration_time FROM {t} WHERE key = ? AND {live}"
        columns = "(key, value, is_binary, etag, expiration_time, update_time)"
        self._sql_upsert = (
            f"INSERT INTO {t} {columns} VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
            "value = excluded.value, is_binary = excluded.is_binary, etag = excluded.etag, "
            "expiration_time = excluded.expiration_time, update_time = excluded.update_time"
        )
        # first-write without an etag: only replace a row that has expired.
        self._sql_insert_new = (
            self._sql_upsert + f" WHERE {t}.expiration_time IS NOT NULL AND {t}.expiration_time <= ?"
        )
        self._sql_update_etag = (
            f"UPDATE {t} SET value = ?, is_binary = ?, etag = ?, expiration_time = ?, update_time = ? "
            f"WHERE key = ? AND etag = ? AND {live}"
        )
        self._sql_delete = f"DELETE FROM {t} WHERE key = ?"
        self._sql_delete_etag = f"DELETE FROM {t} WHERE key = ? AND etag = ? AND {live}"
        self._sql_scan = f"SELECT key, value, is_binary, etag FROM {t} WHERE substr(key, 1, ?) = ? AND {live}"

    # --- life cycle -------------------------------------------------------------------------

    def _create_tables(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self._table} (key TEXT NOT NULL PRIMARY KEY, "
            "value TEXT NOT NULL, is_binary BOOLEAN NOT NULL, etag TEXT NOT NULL, "
            "expiration_time TIMESTAMP DEFAULT NULL, update_time TIMESTAMP DEFAULT NULL)"
        )
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self._meta_table} "
            "(key TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL)"
        )
        conn.execute(f"INSERT OR IGNORE INTO {self._meta_table} (key, value) VALUES ('migrations', '1')")

    async def init(self) -> None:
        await self._database.open()
        if self._cleanup_every > 0:
            self._cleaner = asyncio.create_task(self._clean_forever())

    async def close(self) -> None:
        if self._cleaner is not None:
            self._cleaner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cleaner
        await self._database.close()

    async def ping(self) -> None:
        await self._database.run(self._database.connection().execute, "SELECT 1")

    def _delete_expired(self) -> int:
        now = _db_time(datetime.now(UTC))
        db = self._database.connection()
        deleted = db.execute(
            f"DELETE FROM {self._table} WHERE expiration_time IS NOT NULL AND expiration_time <= ?", (now,)
        ).rowcount
        db.execute(
            f"INSERT INTO {self._meta_table} (key, value) VALUES ('last-cleanup', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (now,),
        )
        return deleted

    async def _clean_forever(self) -> None:
        await sweep_forever(
            lambda: self._database.run(self._delete_expired), self._cleanup_every, "expired rows", log
        )

    # --- rows ---------------------------------------------------------------------------------

    @staticmethod
    def _encode(value: bytes) -> tuple[str, bool]:
        try:
            return value.decode("utf-8"), False
        except UnicodeDecodeError:
            return base64.b64encode(value).decode("ascii"), True

    @staticmethod
    def _decode(text: str, is_binary: Any) -> bytes:
        return base64.b64decode(text) if is_binary else text.encode("utf-8")

    def _get_sync(self, keys: Sequence[str]) -> list[StoredItem | None]:
        now = _db_time(datetime.now(UTC))
        db = self._database.connection()
        items: list[StoredItem | None] = []
        for key in keys:
            row = db.execute(self._sql_get, (key, now)).fetchone()
            items.append(
                None
                if row is None
                else StoredItem(self._decode(row[0], row[1]), row[2], _parse_db_time(row[3]))
            )
        return items

    async def get(self, key: str) -> StoredItem | None:
        return (await self._database.run(self._get_sync, (key,)))[0]

    async def bulk_get(self, keys: Sequence[str]) -> list[StoredItem | None]:
        return await self._database.run(self._get_sync, keys)

    def _apply(self, db: sqlite3.Connection, op: Operation, now: datetime) -> None:
        now_text = _db_time(now)
        if isinstance(op, DeleteOp):
            if op.etag is None:
                db.execute(self._sql_delete, (op.key,))
            elif db.execute(self._sql_delete_etag, (op.key, op.etag, now_text)).rowcount == 0:
                raise ETagMismatch(op.key)
            return
        value, is_binary = self._encode(op.value)
        etag = str(uuid.uuid4())
        expires = _db_time(now + timedelta(seconds=op.ttl)) if op.ttl is not None and op.ttl > 0 else None
        if op.etag is not None:
            params = (value, is_binary, etag, expires, now_text, op.key, op.etag, now_text)
            if db.execute(self._sql_update_etag, params).rowcount == 0:
                raise ETagMismatch(op.key)
        elif op.first_write:
            params_new = (op.key, value, is_binary, etag, expires, now_text, now_text)
            if db.execute(self._sql_insert_new, params_new).rowcount == 0:
                raise ETagMismatch(op.key, "first-write: the key already exists")
        else:
            db.execute(self._sql_upsert, (op.key, value, is_binary, etag, expires, now_text))

    def _write_sync(self, ops: Sequence[Operation]) -> None:
        db = self._database.connection()
        now = datetime.now(UTC)
        if len(ops) == 1:
            self._apply(db, ops[0], now)
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            for op in ops:
                self._apply(db, op, now)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    async def set(self, op: SetOp) -> None:
        await self._database.run(self._write_sync, (op,))

    async def delete(self, op: DeleteOp) -> None:
        await self._database.run(self._write_sync, (op,))

    async def transact(self, ops: Sequence[Operation]) -> None:
        if ops:
            await self._database.run(self._write_sync, ops)

    def _query_sync(self, key_prefix: str, query: Query) -> QueryPage:
        now = _db_time(datetime.now(UTC))
        rows = (
            self._database.connection().execute(self._sql_scan, (len(key_prefix), key_prefix, now)).fetchall()
        )
        return run_query(query, (QueryResult(r[0], self._decode(r[1], r[2]), r[3]) for r in rows))

    async def query(self, key_prefix: str, query: Query) -> QueryPage:
        return await self._database.run(self._query_sync, key_prefix, query)

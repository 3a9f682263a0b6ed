"""``state.postgresql``: state in a PostgreSQL table with the layout of Dapr's ``state.postgresql`` v2.

A table that daprd's v2 store created is used as it is, and daprd v2 can use one Pillion created:
the columns (``value bytea``, ``etag uuid``, ``expires_at``), the metadata table and the migration
key are Dapr's. Pillion adds the alpha query API, which Dapr v2 lacks, by reading the value as
jsonb in SQL (components/state/postgresql_query.py), and creates one helper function for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import Sequence
from typing import Any, ClassVar

import asyncpg

from components.base import ComponentContext
from components.metadata import FieldType, MetadataError, MetadataField, MetadataSchema
from components.periodic import sweep_forever
from components.postgresql_common import CONNECTION_FIELDS, PostgresSettings, create_pool
from components.state.base import (
    DeleteOp,
    ETagInvalid,
    ETagMismatch,
    KeyLimits,
    Operation,
    SetOp,
    StateFeature,
    StoredItem,
)
from components.state.postgresql_query import translate
from components.state.query import Query, QueryPage, QueryResult

log = logging.getLogger("pillion.state.postgresql")

# Unquoted, so PostgreSQL folds case exactly as it does for daprd's (also unquoted) names.
_NAME = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$")
# Serialises the start-up migrations of every Pillion sidecar on one database (any 64-bit number
# would do; this one is "pillion\x00" in ASCII).
_MIGRATION_LOCK = 0x70696C6C696F6E00
# The layout level of Dapr v2's migration key that Pillion reads and writes; a higher level would
# be a layout Pillion does not know.
_LAYOUT_LEVEL = 1
# Deleting a large backlog of expired rows may take much longer than one ordinary statement.
_SWEEP_TIMEOUT = 600.0
# PostgreSQL text cannot hold NUL, and a btree index entry holds at most 2704 bytes: a key of 2600
# bytes (with its prefix) always fits, however little it compresses.
_KEY_LIMITS = KeyLimits(max_bytes=2600, nul=False)
_LIVE = "(expires_at IS NULL OR expires_at > now())"
_EXPIRY = "now() + make_interval(secs => $3::float8)"  # NULL (no expiry) when $3 is NULL


def _dapr_migration_key(table: str) -> str:
    # daprd v2 names its table "<tablePrefix>state" and records the layout level under this key.
    # A table with another name is Pillion's alone; "/" (never in a table name) keeps its key apart.
    prefix = table.removesuffix("state") if table.endswith("state") else f"{table}/"
    return f"migrations-state-v2-{prefix}"


def _count(status: str) -> int:
    """Rows touched, from a command tag such as ``UPDATE 1`` or ``INSERT 0 1``."""
    return int(status.rsplit(" ", 1)[1])


def _etag(key: str, etag: str) -> uuid.UUID:
    try:
        return uuid.UUID(etag)
    except ValueError:
        raise ETagInvalid(key, f"invalid etag value {etag!r}: etags of state.postgresql are UUIDs") from None


class PostgreSQLStateStore:
    schema: ClassVar[MetadataSchema] = CONNECTION_FIELDS + MetadataSchema(
        (
            MetadataField(
                "tableName",
                description="Table holding the state (`schema.table` allowed); default "
                "`<tablePrefix>state`, the table daprd's v2 store uses.",
            ),
            MetadataField(
                "tablePrefix",
                default="",
                description="Dapr v2's option: the table is `<tablePrefix>state`. Not with `tableName`.",
            ),
            MetadataField(
                "metadataTableName",
                default="dapr_metadata",
                description="Table holding the schema level and the last sweep time (`schema.table` "
                "allowed), shared with daprd.",
            ),
            MetadataField(
                "cleanupInterval",
                FieldType.DURATION,
                default=3600.0,
                aliases=("cleanupIntervalInSeconds",),
                description="How often expired rows are deleted (one sidecar per interval does it); "
                "0 or less turns the sweep off. Expired rows read as missing either way.",
            ),
        )
    )
    key_limits: ClassVar[KeyLimits] = _KEY_LIMITS
    features: ClassVar[frozenset[StateFeature]] = frozenset(
        {StateFeature.ETAG, StateFeature.TRANSACTIONAL, StateFeature.TTL, StateFeature.QUERY_API}
    )
    max_operations: int | None = None
    # Dapr's v2 component files load as they are: v2 is the layout this store uses.
    extra_versions: ClassVar[frozenset[str]] = frozenset({"v2"})

    def __init__(self, metadata: dict[str, Any], context: ComponentContext) -> None:
        if metadata["tableName"] and metadata["tablePrefix"]:
            raise MetadataError("tablePrefix", "give tableName or tablePrefix, not both")
        table: str = metadata["tableName"] or f"{metadata['tablePrefix']}state"
        meta_table: str = metadata["metadataTableName"]
        for field, name in (("tableName", table), ("metadataTableName", meta_table)):
            if not _NAME.match(name):
                raise MetadataError(field, f"{name!r} is not a valid table name (letters, digits, _)")
        self._settings = PostgresSettings.from_metadata(metadata)
        self._table = table
        self._meta_table = meta_table
        schema, _, _ = table.rpartition(".")
        self._json_function = f"{schema}.pillion_json_v1" if schema else "pillion_json_v1"
        self._cleanup_every: float = metadata["cleanupInterval"]
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._cleaner: asyncio.Task[None] | None = None
        self._prepare_statements()

    def _prepare_statements(self) -> None:
        t, meta = self._table, self._meta_table
        self._sql_get = f"SELECT value, etag::text, expires_at FROM {t} WHERE key = $1 AND {_LIVE}"
        self._sql_bulk_get = (
            f"SELECT key, value, etag::text, expires_at FROM {t} WHERE key = ANY($1::text[]) AND {_LIVE}"
        )
        self._sql_upsert = (
            f"INSERT INTO {t} AS t (key, value, etag, expires_at) VALUES ($1, $2, gen_random_uuid(), "
            f"{_EXPIRY}) ON CONFLICT (key) DO UPDATE SET value = excluded.value, etag = excluded.etag, "
            "expires_at = excluded.expires_at, updated_at = now()"
        )
        # first-write without an etag: an existing row is replaced only when it has expired.
        self._sql_insert_new = self._sql_upsert + " WHERE t.expires_at IS NOT NULL AND t.expires_at <= now()"
        self._sql_update_etag = (
            f"UPDATE {t} SET value = $2, etag = gen_random_uuid(), expires_at = {_EXPIRY}, "
            f"updated_at = now() WHERE key = $1 AND etag = $4 AND {_LIVE}"
        )
        self._sql_delete = f"DELETE FROM {t} WHERE key = $1"
        self._sql_delete_etag = f"DELETE FROM {t} WHERE key = $1 AND etag = $2 AND {_LIVE}"
        # Claims this interval's sweep: no row back means another sidecar swept less than $2 ago.
        self._sql_claim_sweep = (
            f"INSERT INTO {meta} AS m (key, value) VALUES ($1, now()::text) ON CONFLICT (key) "
            "DO UPDATE SET value = now()::text "
            "WHERE m.value::timestamptz < now() - make_interval(secs => $2::float8)"
        )
        self._sql_delete_expired = f"DELETE FROM {t} WHERE expires_at IS NOT NULL AND expires_at <= now()"

    # --- life cycle -------------------------------------------------------------------------

    async def init(self) -> None:
        self._pool = await create_pool(self._settings)
        try:
            await self._migrate()
        except BaseException:
            self._pool.terminate()
            self._pool = None
            raise
        if self._cleanup_every > 0:
            self._cleaner = asyncio.create_task(self._clean_forever())

    async def _migrate(self) -> None:
        t, meta = self._table, self._meta_table
        key = _dapr_migration_key(t)
        async with self._db().acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {meta} (key text NOT NULL PRIMARY KEY, value text NOT NULL)"
            )
            # daprd locks this row instead of taking an advisory lock (which CockroachDB lacks);
            # locking it too keeps a daprd that migrates at the same moment waiting for us.
            await conn.execute(
                f"INSERT INTO {meta} (key, value) VALUES ('lock', 'lock') ON CONFLICT DO NOTHING"
            )
            await conn.execute(f"SELECT value FROM {meta} WHERE key = 'lock' FOR UPDATE")
            level_text = await conn.fetchval(f"SELECT value FROM {meta} WHERE key = $1", key)
            level = int(level_text) if level_text and level_text.isdigit() else 0
            if level > _LAYOUT_LEVEL:
                raise RuntimeError(
                    f"table {t} has schema level {level} ({meta} key {key!r}), newer than the "
                    f"level {_LAYOUT_LEVEL} this Pillion knows"
                )
            # Even at level 1, in case the table was dropped since: daprd's v2 store would not recreate it.
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {t} (key text NOT NULL PRIMARY KEY, value bytea NOT NULL, "
                "etag uuid NOT NULL DEFAULT gen_random_uuid(), "
                "created_at timestamp with time zone NOT NULL DEFAULT now(), "
                "updated_at timestamp with time zone, expires_at timestamp with time zone)"
            )
            await self._check_layout(conn)
            # The name PostgreSQL gives daprd's unnamed index, so that this finds it.
            index = f"{t.rpartition('.')[2]}_expires_at_idx"
            await conn.execute(f"CREATE INDEX IF NOT EXISTS {index} ON {t} (expires_at)")
            if level < _LAYOUT_LEVEL:
                await conn.execute(
                    f"INSERT INTO {meta} (key, value) VALUES ($1, $2) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    key,
                    str(_LAYOUT_LEVEL),
                )
            if await conn.fetchval("SELECT to_regprocedure($1)", f"{self._json_function}(bytea)") is None:
                # The value as jsonb, or NULL when it is not UTF-8 JSON, so that one binary or
                # non-JSON value leaves a query's other results intact instead of failing it.
                await conn.execute(
                    f"CREATE FUNCTION {self._json_function}(data bytea) RETURNS jsonb "
                    "LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$ "
                    "BEGIN RETURN convert_from(data, 'UTF8')::jsonb; "
                    "EXCEPTION WHEN data_exception THEN RETURN NULL; END $$"
                )

    async def _check_layout(self, conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record]) -> None:
        """Refuse a table of another layout, such as Dapr v1's ``state`` (``value jsonb``, no etag)."""
        expected = {"key": "text", "value": "bytea", "etag": "uuid", "expires_at": "timestamptz"}
        try:
            statement = await conn.prepare(f"SELECT {', '.join(expected)} FROM {self._table} LIMIT 0")
            found = {a.name: a.type.name for a in statement.get_attributes()}
        except asyncpg.PostgresError as exc:
            found = {"error": str(exc)}
        if found != expected:
            raise RuntimeError(
                f"table {self._table} exists without Dapr v2's layout (key text, value bytea, etag uuid, "
                f"expires_at timestamptz): {found}. Is it a Dapr v1 table? Set tableName to another table."
            )

    async def close(self) -> None:
        if self._cleaner is not None:
            self._cleaner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cleaner
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), self._settings.timeout)
            except TimeoutError:
                self._pool.terminate()
            self._pool = None

    async def ping(self) -> None:
        await self._db().fetchval("SELECT 1")

    def _db(self) -> asyncpg.Pool[asyncpg.Record]:
        if self._pool is None:
            raise RuntimeError("the PostgreSQL state store is not connected")
        return self._pool

    async def delete_expired(self) -> int | None:
        """Delete expired rows; None when another sidecar swept within the interval."""
        threshold = max(self._cleanup_every - 0.1, 0.0)  # slack for timers firing a little early
        async with self._db().acquire() as conn:
            claim = await conn.execute(
                self._sql_claim_sweep, f"pillion-last-cleanup-{self._table}", threshold
            )
            if _count(claim) == 0:
                return None
            return _count(await conn.execute(self._sql_delete_expired, timeout=_SWEEP_TIMEOUT))

    async def _clean_forever(self) -> None:
        await sweep_forever(self.delete_expired, self._cleanup_every, f"expired rows from {self._table}", log)

    # --- rows ---------------------------------------------------------------------------------

    async def get(self, key: str) -> StoredItem | None:
        row = await self._db().fetchrow(self._sql_get, key)
        return None if row is None else StoredItem(row[0], row[1], row[2])

    async def bulk_get(self, keys: Sequence[str]) -> list[StoredItem | None]:
        rows = await self._db().fetch(self._sql_bulk_get, list(keys))
        found = {row[0]: StoredItem(row[1], row[2], row[3]) for row in rows}
        return [found.get(key) for key in keys]

    async def _apply(self, conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record], op: Operation) -> None:
        if isinstance(op, DeleteOp):
            if op.etag is None:
                await conn.execute(self._sql_delete, op.key)
            elif _count(await conn.execute(self._sql_delete_etag, op.key, _etag(op.key, op.etag))) == 0:
                raise ETagMismatch(op.key)
            return
        ttl = float(op.ttl) if op.ttl is not None and op.ttl > 0 else None
        if op.etag is not None:
            etag = _etag(op.key, op.etag)
            if _count(await conn.execute(self._sql_update_etag, op.key, op.value, ttl, etag)) == 0:
                raise ETagMismatch(op.key)
        elif op.first_write:
            if _count(await conn.execute(self._sql_insert_new, op.key, op.value, ttl)) == 0:
                raise ETagMismatch(op.key, "first-write: the key already exists")
        else:
            await conn.execute(self._sql_upsert, op.key, op.value, ttl)

    async def set(self, op: SetOp) -> None:
        async with self._db().acquire() as conn:
            await self._apply(conn, op)

    async def delete(self, op: DeleteOp) -> None:
        async with self._db().acquire() as conn:
            await self._apply(conn, op)

    async def transact(self, ops: Sequence[Operation]) -> None:
        if not ops:
            return
        async with self._db().acquire() as conn, conn.transaction():
            for op in ops:
                await self._apply(conn, op)

    async def query(self, key_prefix: str, query: Query) -> QueryPage:
        statement = translate(query, self._table, self._json_function, key_prefix)
        rows = await self._db().fetch(statement.text, *statement.args)
        token = None
        if statement.limit and len(rows) > statement.limit:
            rows = rows[: statement.limit]
            token = str(query.offset + statement.limit)
        return QueryPage([QueryResult(row[0], row[1], row[2]) for row in rows], token)

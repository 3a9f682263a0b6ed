"""``bindings.postgresql`` (also ``bindings.postgres``): run SQL as an output binding.

Operations ``exec`` (metadata ``rows-affected``), ``query`` (a JSON array of rows, each a JSON
array of column values) and ``close``. Metadata ``sql`` holds the statement and ``params`` a JSON
array bound to ``$1``, ``$2``... Each parameter is converted to the type PostgreSQL expects for
it (``"42"`` for an integer column is 42), as Dapr's driver does for the common types.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, ClassVar

import asyncpg

from components import gotime
from components.base import ComponentContext
from components.bindings.base import OUTPUT, BindingError, InvokeRequest, InvokeResponse
from components.metadata import MetadataSchema
from components.postgresql_common import CONNECTION_FIELDS, PostgresSettings, create_pool

_INTEGER = frozenset({"int2", "int4", "int8", "oid"})
_FLOAT = frozenset({"float4", "float8"})


def _parameter(value: Any, type_name: str) -> Any:
    """A JSON value as the Python value asyncpg needs for a parameter of ``type_name``."""
    if value is None:
        return None
    if type_name in _INTEGER:
        return int(value) if not isinstance(value, str) else int(value.strip())
    if type_name in _FLOAT:
        return float(value)
    if type_name == "numeric":
        return Decimal(str(value))
    if type_name == "bool":
        return value if isinstance(value, bool) else str(value).lower() in ("true", "t", "1", "yes", "on")
    if type_name in ("json", "jsonb"):
        return json.dumps(value)
    if type_name in ("timestamp", "timestamptz"):
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        if type_name == "timestamp":
            return moment.replace(tzinfo=None)
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if type_name == "date":
        return date.fromisoformat(str(value))
    if type_name == "uuid":
        return uuid.UUID(str(value))
    if type_name == "bytea":
        return base64.b64decode(value) if isinstance(value, str) else bytes(value)
    if isinstance(value, str):
        return value
    return (
        json.dumps(value)
        if isinstance(value, dict | list)
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
    )


def _column(value: Any) -> Any:
    """A column value as JSON, close to what Dapr's driver writes."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return gotime.rfc3339_nano(moment.astimezone(UTC))
    if isinstance(value, date):
        return value.isoformat() + "T00:00:00Z"
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [_column(v) for v in value]
    return value


class PostgreSQLBinding:
    """Output binding running SQL statements (`exec`, `query`, `close`)."""

    schema: ClassVar[MetadataSchema] = CONNECTION_FIELDS
    directions: ClassVar[frozenset[str]] = frozenset({OUTPUT})
    operations: ClassVar[tuple[str, ...]] = ("exec", "query", "close")

    def __init__(self, metadata: dict[str, Any], context: ComponentContext) -> None:
        self._settings = PostgresSettings.from_metadata(metadata)
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._closed = False

    async def init(self) -> None:
        self._pool = await create_pool(self._settings)

    async def close(self) -> None:
        self._closed = True
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def ping(self) -> None:
        if self._pool is None:
            raise RuntimeError("component is closed")
        await self._pool.fetchval("SELECT 1")

    async def invoke(self, request: InvokeRequest) -> InvokeResponse:
        if request.operation == "close":
            await self.close()
            return InvokeResponse()
        if self._closed or self._pool is None:
            raise BindingError("component is closed")
        sql = request.metadata.get("sql", "")
        if not sql:
            raise BindingError("required metadata not set: sql")
        params: list[Any] = []
        if request.metadata.get("params"):
            try:
                decoded = json.loads(request.metadata["params"])
            except ValueError as exc:
                raise BindingError(
                    f"invalid metadata property params: failed to unserialize into an array: {exc}"
                ) from None
            if not isinstance(decoded, list):
                raise BindingError("invalid metadata property params: failed to unserialize into an array")
            params = decoded
        started = datetime.now(UTC)
        clock = time.perf_counter()
        metadata = {"operation": request.operation, "sql": sql, "start-time": gotime.rfc3339_nano(started)}
        result = InvokeResponse(metadata=metadata)
        try:
            async with self._pool.acquire() as connection:
                statement = await connection.prepare(sql)
                types = [t.name for t in statement.get_parameters()]
                if len(types) != len(params):
                    raise BindingError(
                        f"the statement takes {len(types)} parameters, params has {len(params)}"
                    )
                try:
                    args = [_parameter(v, t) for v, t in zip(params, types, strict=True)]
                except (ValueError, TypeError, ArithmeticError) as exc:
                    raise BindingError(f"invalid metadata property params: {exc}") from None
                if request.operation == "exec":
                    status = await connection.execute(sql, *args)
                    metadata["rows-affected"] = _rows_affected(status)
                else:
                    rows = await statement.fetch(*args)
                    result.data = json.dumps([[_column(v) for v in row.values()] for row in rows]).encode()
        except asyncpg.PostgresError as exc:
            what = "error executing query" if request.operation == "query" else "error executing exec"
            raise BindingError(f"{what}: {exc}") from None
        except (OSError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise BindingError(f"PostgreSQL at {self._settings.where}: {exc or type(exc).__name__}") from None
        metadata["end-time"] = gotime.rfc3339_nano(datetime.now(UTC))
        metadata["duration"] = gotime.duration(time.perf_counter() - clock)
        return result


def _rows_affected(status: str) -> str:
    """The row count at the end of a command tag (``UPDATE 3``, ``INSERT 0 1``), else 0."""
    last = status.rsplit(" ", 1)[-1]
    return last if last.isdigit() else "0"

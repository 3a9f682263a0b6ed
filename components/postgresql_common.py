"""What Pillion's PostgreSQL components share: the connection metadata and the asyncpg pool.

``connectionString`` takes both forms that libpq, and so Dapr, accepts: a ``postgres://`` URL or
``key=value`` pairs (``host=db user=app password='a b' dbname=state``). asyncpg reads only URLs,
so pairs become the query of an empty URL, where asyncpg reads the same names (host, port, dbname,
user, password, sslmode, sslrootcert, ...).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from components.metadata import FieldType, MetadataError, MetadataField, MetadataSchema

CONNECTION_FIELDS = MetadataSchema(
    (
        MetadataField(
            "connectionString",
            required=True,
            sensitive=True,
            description="A `postgres://` URL or libpq `key=value` pairs, as in Dapr. `connect_timeout` "
            "(seconds) is honoured; other names are asyncpg's URL parameters (libpq's common ones).",
        ),
        MetadataField(
            "timeout",
            FieldType.DURATION,
            default=20.0,
            aliases=("timeoutInSeconds",),
            description="Timeout for one database statement, and for connecting when the connection "
            "string sets no `connect_timeout`.",
        ),
        MetadataField(
            "maxConns",
            FieldType.INTEGER,
            default=0,
            description="Most connections in the pool; 0 or less: the larger of 4 and the number of CPUs "
            "(Dapr's default).",
        ),
        MetadataField(
            "connectionMaxIdleTime",
            FieldType.DURATION,
            default=300.0,
            description="An idle pooled connection is closed after this long.",
        ),
        MetadataField(
            "queryExecMode",
            default="cache_statement",
            choices=("cache_statement", "cache_describe", "describe_exec", "exec", "simple_protocol"),
            description="Dapr's pgx modes. The `cache_*` modes keep prepared statements per connection; "
            "the others turn that off, as a transaction-pooling PgBouncer needs.",
        ),
    )
)

_PAIR = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('(?:[^'\\]|\\.)*'|(?:[^\s'\\]|\\.)+)(?=\s|$)")
_ESCAPE = re.compile(r"\\(.)")


def _pairs(text: str) -> dict[str, str]:
    """libpq's ``key=value`` form: values may be single-quoted, with backslash escapes."""
    pairs: dict[str, str] = {}
    text = text.strip()
    pos = 0
    while pos < len(text):
        match = _PAIR.match(text, pos)
        if match is None:
            # The text may hold a password: say where reading stopped, never what is there.
            raise MetadataError(
                "connectionString",
                f"cannot read it at character {pos + 1}: use a postgres:// URL or key=value pairs",
            )
        value = match.group(2)
        if value.startswith("'"):
            value = value[1:-1]
        pairs[match.group(1)] = _ESCAPE.sub(r"\1", value)
        pos = match.end()
    return pairs


@dataclass(frozen=True, slots=True)
class PostgresSettings:
    dsn: str  # always a URL, for asyncpg
    where: str  # host:port/database, without credentials, for messages
    connect_timeout: float
    timeout: float
    max_conns: int
    idle_lifetime: float
    statement_cache: bool

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> PostgresSettings:
        text: str = metadata["connectionString"].strip()
        if text.startswith(("postgres://", "postgresql://")):
            parts = urlsplit(text)
            query = dict(parse_qsl(parts.query))
        else:
            parts = urlsplit("postgresql://")
            query = _pairs(text)
        timeout: float = metadata["timeout"]
        if timeout <= 0:
            raise MetadataError("timeout", "must be more than 0")
        connect_timeout = timeout
        # libpq's connect_timeout is not a server setting, which is what asyncpg makes of names it
        # does not know.
        raw_connect_timeout = query.pop("connect_timeout", "")
        if raw_connect_timeout:
            try:
                connect_timeout = float(raw_connect_timeout)
            except ValueError:
                raise MetadataError("connectionString", "connect_timeout must be a number") from None
        query.setdefault("application_name", "pillion")
        host = query.get("host") or parts.hostname or "localhost"
        port = query.get("port") or (str(parts.port) if parts.port else "5432")
        database = query.get("dbname") or query.get("database") or parts.path.lstrip("/") or "(default)"
        max_conns: int = metadata["maxConns"]
        return cls(
            dsn=urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), "")),
            where=f"{host}:{port}/{database}",
            connect_timeout=connect_timeout,
            timeout=timeout,
            max_conns=max_conns if max_conns > 0 else max(4, os.cpu_count() or 1),
            idle_lifetime=metadata["connectionMaxIdleTime"],
            statement_cache=metadata["queryExecMode"].startswith("cache_"),
        )


async def create_pool(settings: PostgresSettings) -> asyncpg.Pool[asyncpg.Record]:
    """Connect (one connection up front, so a wrong address or password fails start-up)."""
    try:
        return await asyncpg.create_pool(
            settings.dsn,
            min_size=1,
            max_size=settings.max_conns,
            max_inactive_connection_lifetime=settings.idle_lifetime,
            timeout=settings.connect_timeout,
            command_timeout=settings.timeout,
            statement_cache_size=100 if settings.statement_cache else 0,
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise ConnectionError(f"cannot connect to PostgreSQL at {settings.where}: {exc}") from None

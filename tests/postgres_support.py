"""PostgreSQL for the tests: a private database per session, so no user data is ever touched."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
HOW_TO_GET_POSTGRES = (
    "PostgreSQL is needed for these tests. Install and start it (Debian/Ubuntu: `apt-get install "
    "postgresql`, then `pg_ctlcluster --skip-systemctl-redirect <version> main start`; `.ci/run` "
    "does this) so that postgresql://postgres@127.0.0.1:5432 answers, or set PILLION_POSTGRES_URL to "
    "a server where the tests may create and drop their own database (it needs CREATEDB)."
)


def server_url() -> str:
    return os.environ.get("PILLION_POSTGRES_URL") or os.environ.get("POSTGRES_URL") or DEFAULT_SERVER


def fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Run one statement with a short-lived connection of its own."""

    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


@contextmanager
def private_database(server: str, options: str = "") -> Iterator[str]:
    """A new, empty database on ``server`` (``options`` go to CREATE DATABASE); dropped, with any
    connections left, afterwards."""
    name = f"pillion_test_{uuid.uuid4().hex[:12]}"
    fetch(server, f"CREATE DATABASE {name} {options}")
    try:
        yield with_database(server, name)
    finally:
        fetch(server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

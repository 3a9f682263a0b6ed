"""What Pillion's SQLite components share: one connection owned by one dedicated thread.

SQLite connections are not shared across threads and the event loop must never block on disk,
so every call on the connection goes through :meth:`SQLiteDatabase.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

from components.metadata import FieldType, MetadataField

T = TypeVar("T")


def database_fields(busy_timeout: float) -> tuple[MetadataField, ...]:
    """The metadata fields of the connection, with the component's own default lock wait."""
    return (
        MetadataField(
            "timeout", FieldType.DURATION, default=20.0, description="Timeout for one database call."
        ),
        MetadataField(
            "busyTimeout",
            FieldType.DURATION,
            default=busy_timeout,
            description="How long to wait for a lock held by another process.",
        ),
        MetadataField(
            "disableWAL",
            FieldType.BOOLEAN,
            default=False,
            description="Use a rollback journal instead of write-ahead logging.",
        ),
    )


class SQLiteDatabase:
    def __init__(
        self,
        target: str,
        *,
        thread_name: str,
        timeout: float,
        busy_timeout: float,
        wal: bool,
        setup: Callable[[sqlite3.Connection], None],
        closed_message: str,
    ) -> None:
        self._target = target
        self._timeout = timeout
        self._busy_timeout = busy_timeout
        self._wal = wal
        self._setup = setup
        self._closed_message = closed_message
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._conn: sqlite3.Connection | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(self._executor, fn, *args), self._timeout)

    def connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(self._closed_message)
        return self._conn

    async def open(self) -> None:
        await self.run(self._open)

    async def close(self) -> None:
        await self.run(self._shutdown)
        self._executor.shutdown(wait=True)

    def _open(self) -> None:
        target, uri = self._target, self._target.startswith("file:")
        if uri:
            # Drop the Go driver's own options (_txlock, _pragma, ...): they mean nothing here.
            base, _, query = target.partition("?")
            kept = [(k, v) for k, v in parse_qsl(query) if not k.startswith("_")]
            target = base + ("?" + urlencode(kept) if kept else "")
        elif target != ":memory:":
            Path(target).expanduser().parent.mkdir(parents=True, exist_ok=True)
            target = str(Path(target).expanduser())
        conn = None
        try:
            conn = sqlite3.connect(target, uri=uri, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            wal = self._wal and target != ":memory:" and "mode=memory" not in target
            deadline = time.monotonic() + max(self._busy_timeout, 1.0)
            while True:
                try:
                    self._prepare(conn, wal)
                    break
                except sqlite3.OperationalError as exc:
                    # Processes creating one new database at once (two sidecars started together):
                    # switching it to WAL takes a lock SQLite does not wait for, so try again.
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            # SQLite's own words ("unable to open database file") name neither the file nor why.
            why = "" if uri or os.access(Path(target).parent, os.W_OK) else " (its directory is not writable)"
            raise sqlite3.OperationalError(f"cannot use the database {target}: {exc}{why}") from None
        self._conn = conn

    def _prepare(self, conn: sqlite3.Connection, wal: bool) -> None:
        if wal:
            conn.execute("PRAGMA journal_mode = WAL")
            # With WAL, NORMAL loses nothing when the process dies; only a power cut can cost the
            # last commits.
            conn.execute("PRAGMA synchronous = NORMAL")
        self._setup(conn)

    def _shutdown(self) -> None:
        if self._conn is None:
            return
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._conn.close()
        self._conn = None

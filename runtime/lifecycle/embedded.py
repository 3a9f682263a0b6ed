"""The embedded default components, shared by every app of one user on the machine.

With no ``--resources-path`` a sidecar gets ``statestore`` (``state.sqlite``) and ``pubsub``
(``pubsub.sqlite``) in ``~/.pillion/state.db`` and ``~/.pillion/pubsub.db``, the same files for
every app id, as ``dapr init`` gives every app one Redis: apps started separately publish to each
other, and keys stay apart by their app-id prefix. ``--data-dir`` puts both files in that folder
instead (and so isolates the apps that use it).

Pillion 0.1 kept one pair of files per app in ``~/.pillion/<app-id>/``. The first start of that
app id on the shared files *moves* what they held (see :func:`adopt_legacy_data`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

from runtime.resources.loader import ComponentResource

log = logging.getLogger("pillion")
STATE_FILE = "state.db"
PUBSUB_FILE = "pubsub.db"
# A legacy file that has been moved is renamed with this suffix, and kept: nothing is deleted.
MOVED_SUFFIX = ".moved-to-shared"
# The components' default table names (state.sqlite ``tableName``, pubsub.sqlite ``tablePrefix``).
_STATE_TABLE = "state"
_PUBSUB_PREFIX = "pubsub_"


def shared_folder(data_dir: Path | None) -> Path:
    return data_dir or Path.home() / ".pillion"


def default_components(data_dir: Path | None) -> list[ComponentResource]:
    folder = shared_folder(data_dir)
    return [
        ComponentResource(
            name="statestore",
            type="state.sqlite",
            version="v1",
            metadata={"connectionString": str(folder / STATE_FILE)},
            file=Path("<embedded default>"),
        ),
        ComponentResource(
            name="pubsub",
            type="pubsub.sqlite",
            version="v1",
            metadata={"connectionString": str(folder / PUBSUB_FILE)},
            file=Path("<embedded default>"),
        ),
    ]


def adopt_legacy_data(app_id: str, data_dir: Path | None) -> None:
    """Move an app's 0.1 default data into the shared files (blocking: run it in a thread).

    Runs after the default components created their tables. State rows are copied as they are
    (their keys already carry the app-id prefix; a key the shared file already has is kept there).
    Messages the app's own consumer group had not yet been handed are published again into the
    shared file, so the app receives them once it subscribes. Then the old files are renamed with
    the ``.moved-to-shared`` suffix, so this happens once and nothing is lost.
    """
    if data_dir is not None:
        return  # --data-dir: 0.1 used the same files in that folder
    shared = shared_folder(None)
    legacy = shared / app_id
    with _migration_lock(shared):
        for name, move, what in (
            (STATE_FILE, _move_state, "state rows"),
            (PUBSUB_FILE, lambda db: _move_messages(db, app_id), "undelivered messages"),
        ):
            source = legacy / name
            if not source.is_file():
                continue
            try:
                moved = _copy(shared / name, source, move)
            except (sqlite3.Error, OSError) as exc:
                log.warning(
                    "could not move app %r's 0.1 data from %s: %s; it stays there and is tried again "
                    "at the next start",
                    app_id,
                    source,
                    exc,
                )
                continue
            log.info("moved %d %s of app %r from %s to %s", moved, what, app_id, source, shared)


@contextlib.contextmanager
def _migration_lock(folder: Path) -> Iterator[None]:
    """Sidecars of one app id started together move its data once."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".migration.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _copy(target: Path, legacy: Path, move: Callable[[sqlite3.Connection], int]) -> int:
    db = sqlite3.connect(target, isolation_level=None, timeout=30)
    try:
        db.execute("ATTACH DATABASE ? AS legacy", (str(legacy),))
        db.execute("BEGIN IMMEDIATE")
        try:
            count: int = move(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("DETACH DATABASE legacy")
    finally:
        db.close()
    for suffix in ("", "-wal", "-shm"):
        part = legacy.with_name(legacy.name + suffix)
        if part.exists():
            part.rename(part.with_name(part.name + MOVED_SUFFIX))
    return count


def _has_table(db: sqlite3.Connection, table: str) -> bool:
    query = "SELECT 1 FROM legacy.sqlite_master WHERE type = 'table' AND name = ?"
    return db.execute(query, (table,)).fetchone() is not None


def _move_state(db: sqlite3.Connection) -> int:
    if not _has_table(db, _STATE_TABLE):
        return 0
    columns = "key, value, is_binary, etag, expiration_time, update_time"
    cursor = db.execute(
        f"INSERT OR IGNORE INTO main.{_STATE_TABLE} ({columns}) SELECT {columns} FROM legacy.{_STATE_TABLE}"
    )
    return cursor.rowcount


def _move_messages(db: sqlite3.Connection, group: str) -> int:
    messages, consumers, pending = (f"{_PUBSUB_PREFIX}{t}" for t in ("messages", "consumers", "pending"))
    if not _has_table(db, messages):
        return 0
    # Not yet handed to the group (beyond its cursor on that topic), or handed but not acknowledged.
    cursor = db.execute(
        f"INSERT INTO main.{messages} (topic, data, metadata, published_at, expires_at) "
        f"SELECT m.topic, m.data, m.metadata, m.published_at, m.expires_at FROM legacy.{messages} m "
        f"WHERE m.id > COALESCE((SELECT c.last_id FROM legacy.{consumers} c "
        "WHERE c.topic = m.topic AND c.consumer_group = ?), 0) "
        f"OR EXISTS (SELECT 1 FROM legacy.{pending} p WHERE p.message_id = m.id AND p.consumer_group = ?) "
        "ORDER BY m.id",
        (group, group),
    )
    return cursor.rowcount

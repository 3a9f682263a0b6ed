"""``pubsub.sqlite``: a durable broker in one SQLite file (Pillion's own; Dapr has no such component).

Layout: ``messages`` is an append-only log (one row per published message). Each consumer group
(``consumerID``, the app id by default) has a cursor per topic in ``consumers`` and a row in
``pending`` for every message handed out but not yet acknowledged. So:

* apps with different ids (different groups) each get every message (fan-out);
* sidecars with the same id sharing the file compete for messages (each goes to one of them);
* a message leaves ``pending`` only once the handler returned, and leaves ``messages`` once every
  group that subscribes to its topic is past it and has acknowledged it.

A handed-out message is leased to one sidecar for ``leaseDuration``; the holder renews the lease
while the handler runs, so a slow handler is never given to a second sidecar, but the messages of
a sidecar that died (SIGKILL, power cut) go to the next claimer once the lease runs out. A new
group starts with every message still in the file. All SQLite work runs on one dedicated thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from components.base import ComponentContext
from components.metadata import FieldType, MetadataError, MetadataField, MetadataSchema
from components.periodic import sweep_forever
from components.pubsub.base import (
    Handler,
    Message,
    PubSubFeature,
    RetainedMessage,
    SubscribeOptions,
    message_ttl,
)
from components.sqlite_common import SQLiteDatabase, database_fields

log = logging.getLogger("pillion.pubsub.sqlite")
T = TypeVar("T")
_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")


@dataclass(frozen=True, slots=True)
class _Claim:
    messages: list[Message]
    # As many messages were taken as asked for (some may have expired): there may be more.
    full: bool
    # When the earliest lease held by someone else runs out (a dead sidecar's messages), or None.
    next_expiry: float | None


class SQLitePubSub:
    schema: ClassVar[MetadataSchema] = MetadataSchema(
        (
            MetadataField(
                "connectionString",
                required=True,
                aliases=("url",),
                description="Path of the database file (or a `file:` URI). Sidecars that share the "
                "file share the topics. Relative paths are relative to the sidecar's working directory.",
            ),
            MetadataField(
                "tablePrefix", default="pubsub_", description="Prefix of the three tables the broker uses."
            ),
            MetadataField(
                "consumerID",
                default="",
                description="Consumer group: sidecars with the same group share the work, other groups "
                "each get every message. Defaults to the app id.",
            ),
            MetadataField(
                "concurrency",
                FieldType.INTEGER,
                default=10,
                description="Messages handed to the app at once per subscription (1 keeps order).",
            ),
            MetadataField(
                "leaseDuration",
                FieldType.DURATION,
                default=10.0,
                description="How long a handed-out message stays with one sidecar without renewal; "
                "after a sidecar dies its messages go to another after at most this long.",
            ),
            MetadataField(
                "pollInterval",
                FieldType.DURATION,
                default=0.25,
                description="How often the file is checked for messages published by other processes "
                "(publishes through this sidecar are seen at once).",
            ),
            MetadataField(
                "cleanupInterval",
                FieldType.DURATION,
                default=60.0,
                description="How often expired messages (TTL, `retentionPeriod`) are deleted; 0 turns "
                "the sweep off (expired messages are never delivered either way).",
            ),
            MetadataField(
                "retentionPeriod",
                FieldType.DURATION,
                default=0.0,
                description="Delete messages older than this even if not every consumer group has "
                "them yet; 0 keeps them until they are consumed.",
            ),
            *database_fields(busy_timeout=5.0),
        )
    )
    features: ClassVar[frozenset[PubSubFeature]] = frozenset(
        {PubSubFeature.MESSAGE_TTL, PubSubFeature.RETAINED_MESSAGES}
    )

    def __init__(self, metadata: dict[str, Any], context: ComponentContext) -> None:
        prefix: str = metadata["tablePrefix"]
        if not _PREFIX.match(prefix):
            raise MetadataError("tablePrefix", f"{prefix!r} is not a valid table name prefix")
        for name in ("leaseDuration", "pollInterval"):
            if metadata[name] <= 0:
                raise MetadataError(name, "must be above zero")
        self._group: str = metadata["consumerID"] or context.app_id
        self._lease: float = metadata["leaseDuration"]
        self._poll_every: float = metadata["pollInterval"]
        self._cleanup_every: float = metadata["cleanupInterval"]
        self._retention: float = metadata["retentionPeriod"]
        # Identifies this process's leases; a restarted sidecar is a new owner.
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._database = SQLiteDatabase(
            metadata["connectionString"],
            thread_name=f"sqlite-{context.name}",
            timeout=metadata["timeout"],
            busy_timeout=metadata["busyTimeout"],
            wal=not metadata["disableWAL"],
            setup=self._create_tables,
            closed_message="the SQLite pubsub is closed",
        )
        self._subscriptions: list[_Subscription] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._data_version = 0
        self._prepare_statements(prefix)

    def _prepare_statements(self, p: str) -> None:
        self._messages, self._consumers, self._pending = f"{p}messages", f"{p}consumers", f"{p}pending"
        m, c, q = self._messages, self._consumers, self._pending
        self._ddl = (
            f"CREATE TABLE IF NOT EXISTS {m} (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, "
            "data BLOB NOT NULL, metadata TEXT NOT NULL, published_at REAL NOT NULL, expires_at REAL)",
            f"CREATE INDEX IF NOT EXISTS {m}_topic ON {m} (topic, id)",
            f"CREATE TABLE IF NOT EXISTS {c} (topic TEXT NOT NULL, consumer_group TEXT NOT NULL, "
            "last_id INTEGER NOT NULL, PRIMARY KEY (topic, consumer_group)) WITHOUT ROWID",
            f"CREATE TABLE IF NOT EXISTS {q} (consumer_group TEXT NOT NULL, message_id INTEGER NOT NULL, "
            "topic TEXT NOT NULL, owner TEXT NOT NULL, lease_until REAL NOT NULL, "
            "deliveries INTEGER NOT NULL, PRIMARY KEY (consumer_group, message_id)) WITHOUT ROWID",
            f"CREATE INDEX IF NOT EXISTS {q}_lease ON {q} (consumer_group, topic, lease_until)",
            f"CREATE INDEX IF NOT EXISTS {q}_message ON {q} (message_id)",
            f"CREATE INDEX IF NOT EXISTS {q}_owner ON {q} (owner)",
        )
        self._sql_insert = (
            f"INSERT INTO {m} (topic, data, metadata, published_at, expires_at) VALUES (?, ?, ?, ?, ?)"
        )
        self._sql_join = f"INSERT OR IGNORE INTO {c} (topic, consumer_group, last_id) VALUES (?, ?, 0)"
        self._sql_has_work = (
            f"SELECT EXISTS (SELECT 1 FROM {q} WHERE consumer_group = ? AND topic = ? AND lease_until <= ?) "
            f"OR EXISTS (SELECT 1 FROM {m} WHERE topic = ? AND id > "
            f"(SELECT last_id FROM {c} WHERE topic = ? AND consumer_group = ?))"
        )
        self._sql_next_expiry = (
            f"SELECT MIN(lease_until) FROM {q} WHERE consumer_group = ? AND topic = ? AND owner != ?"
        )
        self._sql_expired_leases = (
            f"SELECT message_id FROM {q} WHERE consumer_group = ? AND topic = ? AND lease_until <= ? "
            "ORDER BY message_id LIMIT ?"
        )
        self._sql_take_over = (
            f"UPDATE {q} SET owner = ?, lease_until = ?, deliveries = deliveries + 1 "
            "WHERE consumer_group = ? AND message_id = ?"
        )
        self._sql_cursor = f"SELECT last_id FROM {c} WHERE topic = ? AND consumer_group = ?"
        self._sql_fresh = f"SELECT id FROM {m} WHERE topic = ? AND id > ? ORDER BY id LIMIT ?"
        self._sql_hand_out = (
            f"INSERT INTO {q} (consumer_group, message_id, topic, owner, lease_until, deliveries) "
            "VALUES (?, ?, ?, ?, ?, 1)"
        )
        self._sql_advance = f"UPDATE {c} SET last_id = ? WHERE topic = ? AND consumer_group = ?"
        self._sql_ack = f"DELETE FROM {q} WHERE consumer_group = ? AND message_id = ?"
        # A message is kept while any group on its topic has not reached it or still holds it.
        self._sql_collect = (
            f"DELETE FROM {m} WHERE id = ? AND NOT EXISTS (SELECT 1 FROM {q} WHERE message_id = ?) "
            f"AND NOT EXISTS (SELECT 1 FROM {c} WHERE topic = ? AND last_id < ?)"
        )
        self._sql_release = (
            f"UPDATE {q} SET owner = '', lease_until = ? "
            "WHERE consumer_group = ? AND message_id = ? AND owner = ?"
        )
        self._sql_renew = f"UPDATE {q} SET lease_until = ? WHERE owner = ?"
        self._sql_expire = (
            f"DELETE FROM {m} WHERE (expires_at IS NOT NULL AND expires_at <= ?) OR published_at < ?"
        )
        self._sql_orphans = f"DELETE FROM {q} WHERE message_id NOT IN (SELECT id FROM {m})"
        live = "topic = ? AND (expires_at IS NULL OR expires_at > ?)"
        self._sql_retained = (
            f"SELECT id, topic, data, metadata, published_at FROM {m} WHERE {live} ORDER BY id LIMIT ?"
        )
        self._sql_retained_one = (
            f"SELECT id, topic, data, metadata, published_at FROM {m} WHERE {live} AND id = ?"
        )
        self._sql_delete_retained = f"DELETE FROM {m} WHERE topic = ? AND id = ?"
        self._sql_forget_pending = f"DELETE FROM {q} WHERE message_id = ?"

    # --- life cycle -------------------------------------------------------------------------

    def _create_tables(self, conn: sqlite3.Connection) -> None:
        for statement in self._ddl:
            conn.execute(statement)

    async def init(self) -> None:
        await self._database.open()

    async def close(self) -> None:
        for subscription in list(self._subscriptions):
            await subscription.close()
        await self._stop_tasks()
        await self._database.close()

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def ping(self) -> None:
        await self._database.run(self._database.connection().execute, "SELECT 1")

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        db = self._database.connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            result = work(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    # --- publish ------------------------------------------------------------------------------

    def _insert(self, topic: str, data: bytes, metadata: str, now: float, expires: float | None) -> None:
        self._database.connection().execute(self._sql_insert, (topic, data, metadata, now, expires))

    async def publish(self, topic: str, data: bytes, metadata: dict[str, str]) -> None:
        now = time.time()
        ttl = message_ttl(metadata)
        expires = now + ttl if ttl is not None else None
        await self._database.run(self._insert, topic, data, json.dumps(metadata), now, expires)
        for subscription in self._subscriptions:
            if subscription.topic == topic:
                subscription.wake()

    # --- retained messages (RETAINED_MESSAGES) ------------------------------------------------

    @staticmethod
    def _retained_row(row: tuple[Any, ...]) -> RetainedMessage:
        return RetainedMessage(str(row[0]), row[1], bytes(row[2]), json.loads(row[3]), row[4])

    def _retained_sync(self, topic: str, limit: int) -> list[RetainedMessage]:
        rows = self._database.connection().execute(self._sql_retained, (topic, time.time(), limit))
        return [self._retained_row(row) for row in rows.fetchall()]

    def _retained_one_sync(self, topic: str, message_id: int) -> RetainedMessage | None:
        rows = self._database.connection().execute(self._sql_retained_one, (topic, time.time(), message_id))
        row = rows.fetchone()
        return None if row is None else self._retained_row(row)

    def _delete_retained_sync(self, topic: str, message_ids: list[int]) -> int:
        def delete(db: sqlite3.Connection) -> int:
            deleted = 0
            for message_id in message_ids:
                gone: int = db.execute(self._sql_delete_retained, (topic, message_id)).rowcount
                if gone:
                    db.execute(self._sql_forget_pending, (message_id,))
                deleted += gone
            return deleted

        return self._transaction(delete)

    async def retained(self, topic: str, limit: int) -> list[RetainedMessage]:
        return await self._database.run(self._retained_sync, topic, limit)

    async def retained_message(self, topic: str, message_id: str) -> RetainedMessage | None:
        number = _row_id(message_id)
        if number is None:
            return None
        return await self._database.run(self._retained_one_sync, topic, number)

    async def delete_retained(self, topic: str, message_ids: Sequence[str]) -> int:
        numbers = [n for n in map(_row_id, message_ids) if n is not None]
        return await self._database.run(self._delete_retained_sync, topic, numbers) if numbers else 0

    # --- subscribe ----------------------------------------------------------------------------

    async def subscribe(self, topic: str, handler: Handler, options: SubscribeOptions) -> _Subscription:
        await self._database.run(self._database.connection().execute, self._sql_join, (topic, self._group))
        subscription = _Subscription(self, topic, handler, max(1, options.concurrency))
        self._subscriptions.append(subscription)
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._watch_forever()),
                asyncio.create_task(self._renew_forever()),
            ]
            if self._cleanup_every > 0:
                self._tasks.append(asyncio.create_task(self._clean_forever()))
        subscription.start()
        return subscription

    async def _forget(self, subscription: _Subscription) -> None:
        with contextlib.suppress(ValueError):
            self._subscriptions.remove(subscription)
        if not self._subscriptions:
            await self._stop_tasks()

    def _claim_sync(self, topic: str, limit: int) -> _Claim:
        db = self._database.connection()
        now = time.time()
        group, owner, lease_until = self._group, self._owner, now + self._lease
        has_work = db.execute(self._sql_has_work, (group, topic, now, topic, topic, group)).fetchone()[0]
        ids: list[int] = []
        if has_work:

            def hand_out(db: sqlite3.Connection) -> None:
                expired = db.execute(self._sql_expired_leases, (group, topic, now, limit)).fetchall()
                for (message_id,) in expired:
                    db.execute(self._sql_take_over, (owner, lease_until, group, message_id))
                    ids.append(message_id)
                if len(ids) < limit:
                    (last_id,) = db.execute(self._sql_cursor, (topic, group)).fetchone()
                    fresh = db.execute(self._sql_fresh, (topic, last_id, limit - len(ids))).fetchall()
                    for (message_id,) in fresh:
                        db.execute(self._sql_hand_out, (group, message_id, topic, owner, lease_until))
                        ids.append(message_id)
                    if fresh:
                        db.execute(self._sql_advance, (fresh[-1][0], topic, group))

            self._transaction(hand_out)
        messages = self._load(ids, now) if ids else []
        (next_expiry,) = db.execute(self._sql_next_expiry, (group, topic, owner)).fetchone()
        return _Claim(messages, len(ids) == limit, next_expiry)

    def _load(self, ids: list[int], now: float) -> list[Message]:
        db = self._database.connection()
        marks = ",".join("?" * len(ids))
        rows = db.execute(
            f"SELECT id, topic, data, metadata, expires_at FROM {self._messages} WHERE id IN ({marks})", ids
        ).fetchall()
        found = {row[0]: row for row in rows}
        messages: list[Message] = []
        for message_id in ids:
            row = found.get(message_id)
            if row is None or (row[4] is not None and row[4] <= now):
                # Expired (MESSAGE_TTL) or swept by retentionPeriod: settled without delivery.
                self._ack_sync(message_id, row[1] if row else "")
                continue
            messages.append(Message(row[1], bytes(row[2]), json.loads(row[3]), str(message_id)))
        return messages

    def _ack_sync(self, message_id: int, topic: str) -> None:
        def settle(db: sqlite3.Connection) -> None:
            db.execute(self._sql_ack, (self._group, message_id))
            db.execute(self._sql_collect, (message_id, message_id, topic, message_id))

        self._transaction(settle)

    def _release_sync(self, message_id: int, available_at: float) -> None:
        self._database.connection().execute(
            self._sql_release, (available_at, self._group, message_id, self._owner)
        )

    async def _claim(self, topic: str, limit: int) -> _Claim:
        return await self._database.run(self._claim_sync, topic, limit)

    async def _ack(self, message: Message) -> None:
        await self._database.run(self._ack_sync, int(message.id), message.topic)

    async def _release(self, message: Message, delay: float) -> None:
        await self._database.run(self._release_sync, int(message.id), time.time() + delay)

    # --- background work ----------------------------------------------------------------------

    def _data_changed(self) -> bool:
        # data_version changes when another connection (another process) commits.
        (version,) = self._database.connection().execute("PRAGMA data_version").fetchone()
        changed: bool = version != self._data_version
        self._data_version = version
        return changed

    async def _watch_forever(self) -> None:
        while True:
            await asyncio.sleep(self._poll_every)
            try:
                changed = await self._database.run(self._data_changed)
            except Exception as exc:  # a failed check must not end the watch
                log.warning("checking for new messages failed: %s", exc)
                continue
            if changed:
                for subscription in self._subscriptions:
                    subscription.wake()

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            try:
                await self._database.run(
                    self._database.connection().execute,
                    self._sql_renew,
                    (time.time() + self._lease, self._owner),
                )
            except Exception as exc:
                log.warning("renewing message leases failed: %s", exc)

    def _sweep_sync(self) -> int:
        now = time.time()
        oldest = now - self._retention if self._retention > 0 else float("-inf")

        def sweep(db: sqlite3.Connection) -> int:
            deleted: int = db.execute(self._sql_expire, (now, oldest)).rowcount
            if deleted:
                db.execute(self._sql_orphans)
            return deleted

        return self._transaction(sweep)

    async def _clean_forever(self) -> None:
        await sweep_forever(
            lambda: self._database.run(self._sweep_sync), self._cleanup_every, "expired messages", log
        )


def _row_id(text: str) -> int | None:
    """A message id as listed (a row id), or None for text that cannot be one."""
    return int(text) if text.isascii() and text.isdigit() and int(text) < 2**63 else None


class _Subscription:
    def __init__(self, broker: SQLitePubSub, topic: str, handler: Handler, concurrency: int) -> None:
        self.topic = topic
        self._broker = broker
        self._handler = handler
        self._concurrency = concurrency
        self._wake = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._closing = False
        self._loop_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._claim_forever())

    def wake(self) -> None:
        self._wake.set()

    async def _claim_forever(self) -> None:
        lease = self._broker._lease
        while not self._closing:
            self._wake.clear()
            free = self._concurrency - len(self._in_flight)
            timeout: float | None = lease
            if free > 0:
                try:
                    claim = await self._broker._claim(self.topic, free)
                except Exception as exc:
                    log.warning("reading messages of topic %s failed: %s", self.topic, exc)
                    claim = _Claim([], False, time.time() + 1.0)
                for message in claim.messages:
                    if self._closing:
                        await self._broker._release(message, 0.0)
                        continue
                    task = asyncio.create_task(self._deliver(message))
                    self._in_flight.add(task)
                if claim.full:
                    continue
                if claim.next_expiry is not None:
                    timeout = min(lease, max(0.0, claim.next_expiry - time.time()) + 0.01)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _deliver(self, message: Message) -> None:
        try:
            await self._handler(message)
        except asyncio.CancelledError:
            # Shutting down before the app answered: hand the message out again at once.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._broker._release(message, 0.0))
            raise
        except Exception as exc:
            log.warning("handler failed for message %s on %s: %s", message.id, message.topic, exc)
            with contextlib.suppress(Exception):
                await self._broker._release(message, self._broker._lease)
        else:
            try:
                await self._broker._ack(message)
            except Exception as exc:
                # The lease runs out and the message comes again: a duplicate, never a loss.
                log.error("acknowledging message %s on %s failed: %s", message.id, message.topic, exc)
                with contextlib.suppress(Exception):
                    await self._broker._release(message, 0.0)
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._in_flight.discard(task)
            self._wake.set()

    async def close(self) -> None:
        """Stop claiming and wait for the handlers in flight to finish."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        if self._loop_task is not None:
            await asyncio.gather(self._loop_task, return_exceptions=True)
        await asyncio.gather(*list(self._in_flight), return_exceptions=True)
        await self._broker._forget(self)

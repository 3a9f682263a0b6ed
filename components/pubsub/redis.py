"""``pubsub.redis``: Redis Streams with consumer groups, framed as Dapr frames its messages.

A topic is a stream. Publishing is ``XADD <topic> * data <bytes> [metadata <json>]``, so Dapr
sidecars and Pillion sidecars can publish to and consume from the same streams. Each app is a
consumer group (``consumerID``, by default the app id); each subscription in each sidecar process
is a consumer with a name of its own, so sidecars of one app compete for messages and different
apps each get every message.

At-least-once delivery, and how it differs from Dapr's component (see docs/pubsub-redis.md):

* A message is acknowledged (``XACK``) only after its handler returned normally. A handler that
  raises leaves the message pending; it is claimed again once it has been idle for
  ``processingTimeout``.
* The reader asks Redis only for as many messages as the subscription has free handler slots, so
  no message ages in a local buffer while Redis counts it as being processed
  (components-contrib#4599).
* While a handler runs, its message's idle time is reset every third of ``processingTimeout``
  (``XCLAIM ... JUSTID`` to ourselves), so a slow handler does not see its message handed to another
  consumer, and handlers are not cut off at ``processingTimeout`` (dapr#3481, dapr#5364).
* Messages whose consumer died are claimed with ``XAUTOCLAIM`` every ``redeliverInterval``; IDs this
  subscription still holds are never dispatched twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, cast

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import StreamEntry, StreamIdT

from components.base import ComponentContext
from components.metadata import FieldType, MetadataError, MetadataField, MetadataSchema
from components.pubsub.base import Handler, Message, PubSubFeature, RetainedMessage, SubscribeOptions
from components.pubsub.handlers import CONCURRENCY_FIELD
from components.pubsub.naming import expand_consumer_id
from components.redis_common import CONNECTION_FIELDS, RedisSettings, build_client
from components.redis_pipeline import RedisPipeline, for_settings

log = logging.getLogger("pillion.pubsub.redis")

_MS = 0.001
# How long a reader waits for new entries when readTimeout is -1 (no socket timeout).
_DEFAULT_BLOCK_SECONDS = 3.0
# XAUTOCLAIM (Redis 6.2) is what reclaims messages of dead consumers.
_MIN_SERVER_VERSION = (6, 2)
_FIRST_ID = "0-0"
_NOT_NAME_CHARACTER = re.compile(r"[^!-~]")
# Most pending entries one closing consumer makes claimable at once; any beyond wait processingTimeout.
_HAND_BACK_LIMIT = 1000

_STREAM_FIELDS = MetadataSchema(
    (
        MetadataField(
            "consumerID",
            default="",
            description="Consumer group name (default: the app id). `{appID}`, `{uuid}`, `{podName}` "
            "and `{namespace}` are replaced, as in Dapr.",
        ),
        MetadataField(
            "processingTimeout",
            FieldType.DURATION,
            default=60.0,
            bare_unit_seconds=_MS,
            description="How long a message must sit unacknowledged, with no live handler renewing it, "
            "before another consumer may take it; 0 turns redelivery off.",
        ),
        MetadataField(
            "redeliverInterval",
            FieldType.DURATION,
            default=15.0,
            bare_unit_seconds=_MS,
            description="How often to look for messages to redeliver; 0 turns redelivery off. "
            "Duration strings such as `30s` work (Dapr ignores them).",
        ),
        MetadataField(
            "queueDepth",
            FieldType.INTEGER,
            default=100,
            description="Most messages fetched by one read (never more than the free handler slots).",
        ),
        CONCURRENCY_FIELD,
        MetadataField(
            "maxLenApprox",
            FieldType.INTEGER,
            description="Trim each stream on publish to about this many entries (`XADD MAXLEN ~`).",
        ),
        MetadataField(
            "streamTTL",
            FieldType.DURATION,
            bare_unit_seconds=_MS,
            description="Trim entries older than this on publish (`XADD MINID ~`).",
        ),
    )
)


_ENTRY_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")


def _entry_id(text: str) -> bool:
    """Whether ``text`` can be a stream entry id (two 64-bit numbers)."""
    return bool(_ENTRY_ID.match(text)) and all(int(part) < 2**64 for part in text.split("-"))


def _fields_message(fields: dict[Any, Any], describe: str, pubsub: str) -> tuple[bytes, dict[str, str]]:
    """A stream entry's ``data`` and ``metadata`` fields, as Dapr frames them."""
    metadata: dict[str, str] = {}
    raw_metadata = fields.get(b"metadata")
    if raw_metadata:
        try:
            decoded = json.loads(raw_metadata)
            metadata = {str(k): str(v) for k, v in decoded.items()}
        except (ValueError, AttributeError):
            log.warning("pubsub %s: message %s has unreadable metadata; ignoring it", pubsub, describe)
    data = fields.get(b"data", b"")
    return (data if isinstance(data, bytes) else data.encode()), metadata


def _retained(pubsub: str, topic: str, entry_id: bytes | str, fields: dict[Any, Any]) -> RetainedMessage:
    text_id = _text(entry_id)
    data, metadata = _fields_message(fields, f"{text_id} on {topic!r}", pubsub)
    # An entry id starts with the milliseconds at which Redis stored it.
    return RetainedMessage(text_id, topic, data, metadata, int(text_id.split("-")[0]) * _MS)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisPubSub:
    schema: ClassVar[MetadataSchema] = CONNECTION_FIELDS + _STREAM_FIELDS
    # A stream keeps its entries after every group acknowledged them (until trimmed).
    features: ClassVar[frozenset[PubSubFeature]] = frozenset({PubSubFeature.RETAINED_MESSAGES})

    def __init__(self, metadata: dict[str, Any], context: ComponentContext) -> None:
        self.settings = RedisSettings.from_metadata(metadata)
        self.name = context.name
        self.group = expand_consumer_id(str(metadata["consumerID"]), context.app_id)
        # Unique per process, so that sidecars sharing an app id are distinct consumers of the
        # group: a message read by one is never mistaken for another's.
        self.consumer_prefix = f"{self.group}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.processing_timeout: float = metadata["processingTimeout"]
        self.redeliver_interval: float = metadata["redeliverInterval"]
        self.queue_depth: int = metadata["queueDepth"]
        for name in ("queueDepth", "concurrency"):
            if metadata[name] < 1:
                raise MetadataError(name, "must be at least 1")
        for name in ("processingTimeout", "redeliverInterval", "streamTTL"):
            if (metadata[name] or 0) < 0:
                raise MetadataError(name, "must not be negative")
        max_len, ttl = metadata["maxLenApprox"], metadata["streamTTL"]
        if max_len is not None and max_len < 0:
            raise MetadataError("maxLenApprox", "must not be negative")
        if max_len and ttl:
            log.warning(
                "pubsub %s: both maxLenApprox and streamTTL are set; trimming by maxLenApprox only", self.name
            )
        self._max_len: int = max_len or 0
        self._stream_ttl_ms = int(ttl * 1000) if ttl and not max_len else 0
        self.block_seconds = self.settings.read_timeout or _DEFAULT_BLOCK_SECONDS
        self._client: Redis | None = None
        # Publishes and acknowledgements over one pipelined connection (not with TLS or Sentinel).
        self._pipeline: RedisPipeline | None = None
        self._subscriptions: set[StreamSubscription] = set()
        self._count = 0

    # --- life cycle -------------------------------------------------------------------------

    async def init(self) -> None:
        client = build_client(self.settings)
        try:
            await client.ping()
            server = await client.info("server")
        except RedisError as exc:
            await client.aclose()
            raise RuntimeError(f"cannot reach Redis at {self.settings.address}: {exc}") from None
        version = tuple(int(part) for part in str(server.get("redis_version", "0.0")).split(".")[:2])
        if version < _MIN_SERVER_VERSION:
            await client.aclose()
            raise RuntimeError(
                f"Redis at {self.settings.address} is version {server.get('redis_version')}; "
                "pubsub.redis needs 6.2 or newer (XAUTOCLAIM)"
            )
        self._client = client
        self._pipeline = for_settings(self.settings)

    async def close(self) -> None:
        subscriptions, self._subscriptions = list(self._subscriptions), set()
        await asyncio.gather(*(s.close() for s in subscriptions))
        if self._pipeline is not None:
            await self._pipeline.aclose()
            self._pipeline = None
        if self._client is not None:
            await self._client.aclose()
        self._client = None

    async def ping(self) -> None:
        await self._redis().ping()

    def _redis(self) -> Redis:
        if self._client is None:
            raise RuntimeError(f"pubsub {self.name} is not connected")
        return self._client

    # --- publish and subscribe --------------------------------------------------------------

    async def publish(self, topic: str, data: bytes, metadata: dict[str, str]) -> None:
        client = self._redis()
        command: list[str | bytes | int] = ["XADD", topic]
        if self._max_len:
            command += ["MAXLEN", "~", self._max_len]
        elif self._stream_ttl_ms:
            # Entries older than the TTL go; "-1" keeps an entry added in that very millisecond.
            command += ["MINID", "~", f"{int(time.time() * 1000) - self._stream_ttl_ms}-1"]
        command += ["*", "data", data]
        if metadata:
            command += ["metadata", json.dumps(metadata)]
        await self.execute(client, *command)

    @property
    def pipelined(self) -> bool:
        return self._pipeline is not None

    async def execute(self, client: Redis, *command: str | bytes | int) -> Any:
        """A command that does not block: on the pipelined connection when there is one."""
        if self._pipeline is not None:
            return await self._pipeline.execute(*command)
        # redis-py leaves execute_command untyped: called through a typed alias.
        run = cast("Callable[..., Awaitable[Any]]", client.execute_command)
        return await run(*command)

    # --- retained messages (RETAINED_MESSAGES) ------------------------------------------------

    async def _range(self, topic: str, first: str, last: str, count: int | None) -> list[RetainedMessage]:
        found = await self._redis().xrange(topic, first, last, count=count) or []
        return [
            _retained(self.name, topic, entry_id, fields)
            for entry_id, fields in found
            if entry_id is not None and fields is not None
        ]

    async def retained(self, topic: str, limit: int) -> list[RetainedMessage]:
        return await self._range(topic, "-", "+", limit)

    async def retained_message(self, topic: str, message_id: str) -> RetainedMessage | None:
        if not _entry_id(message_id):
            return None
        found = await self._range(topic, message_id, message_id, None)
        return found[0] if found else None

    async def delete_retained(self, topic: str, message_ids: Sequence[str]) -> int:
        valid = [m for m in message_ids if _entry_id(m)]
        return int(await self._redis().xdel(topic, *valid)) if valid else 0

    async def subscribe(self, topic: str, handler: Handler, options: SubscribeOptions) -> StreamSubscription:
        client = self._redis()
        self._count += 1
        consumer = f"{self.consumer_prefix}-{self._count}"
        # Connection names cannot hold spaces or control characters; consumer names can.
        reader_name = _NOT_NAME_CHARACTER.sub("_", consumer)
        subscription = StreamSubscription(
            owner=self,
            client=client,
            # A connection of its own, named so that close() can find it and end its wait.
            reader=build_client(self.settings, blocking_for=self.block_seconds, client_name=reader_name),
            reader_name=reader_name,
            topic=topic,
            consumer=consumer,
            handler=handler,
            slots=max(1, options.concurrency),
        )
        try:
            await subscription.start()
        except BaseException:
            await subscription.reader.aclose()
            raise
        self._subscriptions.add(subscription)
        return subscription

    def forget(self, subscription: StreamSubscription) -> None:
        self._subscriptions.discard(subscription)


class StreamSubscription:
    """One consumer of one stream: a read loop, the handlers it started, and their lease renewal.

    Nothing here is cancelled while it waits on Redis (redis-py can lose a cancellation that
    arrives mid-command, and with it the connection's state): the loops stop when asked, and a
    blocked read is ended early with ``CLIENT UNBLOCK``.
    """

    def __init__(
        self,
        *,
        owner: RedisPubSub,
        client: Redis,
        reader: Redis,
        reader_name: str,
        topic: str,
        consumer: str,
        handler: Handler,
        slots: int,
    ) -> None:
        self.owner = owner
        self.topic = topic
        self.group = owner.group
        self.consumer = consumer
        self._client = client
        self.reader = reader
        self._reader_name = reader_name
        self._handler = handler
        self._slots = slots
        # Entry IDs handed to a handler that has not finished yet.
        self._held: set[str] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._stop_reading = asyncio.Event()
        self._stop_renewing = asyncio.Event()
        self._redelivery = owner.processing_timeout > 0 and owner.redeliver_interval > 0
        self._min_idle_ms = max(1, int(owner.processing_timeout * 1000))
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._acks = _Acks(self._xack)

    async def start(self) -> None:
        await self._create_group()
        self._tasks.append(asyncio.create_task(self._consume(), name=f"redis-stream-{self.topic}"))
        if self.owner.processing_timeout > 0:
            self._tasks.append(asyncio.create_task(self._renew_leases(), name=f"redis-lease-{self.topic}"))

    async def close(self) -> None:
        """Stop reading, let the handlers in flight finish (acking those that succeed), then leave."""
        if self._closed:
            return
        self._closed = True
        self.owner.forget(self)
        self._stop_reading.set()
        self._slot_freed.set()
        reading = self._tasks[0]
        try:
            while not reading.done():
                await self._unblock_reader()
                await asyncio.wait({reading}, timeout=0.1)
            if self._handlers:
                await asyncio.wait(self._handlers)
        except asyncio.CancelledError:
            # Our caller gave up waiting: unfinished messages stay pending, for redelivery.
            for task in self._handlers:
                task.cancel()
            raise
        finally:
            self._stop_renewing.set()
        await asyncio.wait(self._tasks)
        await self._leave_group()
        await self.reader.aclose()

    async def _unblock_reader(self) -> None:
        try:
            for client in await self._client.client_list():
                if client.get("name") == self._reader_name:
                    await self._client.client_unblock(int(client["id"]))
        except (RedisError, OSError):
            pass  # e.g. CLIENT is not allowed to this user: the read ends by itself within readTimeout

    async def _sleep(self, seconds: float, stop: asyncio.Event) -> bool:
        """Wait ``seconds`` or until ``stop`` is set; True when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        return stop.is_set()

    # --- reading ------------------------------------------------------------------------------

    async def _create_group(self) -> None:
        try:
            # Start ID 0: a new group first gets everything already in the stream, as in Dapr.
            await self._client.xgroup_create(self.topic, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise

    async def _consume(self) -> None:
        owner = self.owner
        next_reclaim = time.monotonic() if self._redelivery else float("inf")
        cursor = _FIRST_ID
        failures = 0
        backlog = False
        while not self._stop_reading.is_set():
            if len(self._held) >= self._slots:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            free = min(self._slots - len(self._held), owner.queue_depth)
            try:
                now = time.monotonic()
                if now >= next_reclaim:
                    cursor, entries = await self._reclaim(cursor, free)
                    if cursor == _FIRST_ID:  # the whole pending list was scanned
                        next_reclaim = now + owner.redeliver_interval
                else:
                    # While there is a backlog, read without blocking on the pipelined connection
                    # (cheaper); after a read that found nothing, wait on the reader's own.
                    entries = await self._read_now(free) if backlog and owner.pipelined else []
                    if not entries:
                        block = min(owner.block_seconds, next_reclaim - now)
                        reply = await self.reader.xreadgroup(
                            self.group,
                            self.consumer,
                            {self.topic: ">"},
                            count=free,
                            block=max(1, int(block * 1000)),
                        )
                        # RESP2 (our clients' protocol) answers [[stream, entries]].
                        entries = [entry for _, batch in cast(list[list[Any]], reply) for entry in batch]
                    backlog = bool(entries)
                # Even when stopping: what was read is in this consumer's pending list, so handle it.
                self._dispatch(entries)
                failures = 0
                continue
            except ResponseError as exc:
                if str(exc).startswith("NOGROUP"):
                    # The stream or the group is gone (server flushed or restarted without data).
                    log.warning(
                        "pubsub %s: consumer group %r of %r is gone; creating it again",
                        owner.name,
                        self.group,
                        self.topic,
                    )
                    if not await self._sleep(0.1 * 2**failures, self._stop_reading):
                        with contextlib.suppress(RedisError, OSError):
                            await self._create_group()
                    failures += 1
                    continue
                log.error("pubsub %s: reading %r failed: %s", owner.name, self.topic, exc)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if failures == 0:
                    log.warning(
                        "pubsub %s: lost Redis while reading %r (%s); retrying", owner.name, self.topic, exc
                    )
            except Exception:
                log.exception("pubsub %s: unexpected error reading %r", owner.name, self.topic)
            await self._sleep(min(5.0, 0.1 * 2**failures), self._stop_reading)
            failures += 1

    async def _read_now(self, count: int) -> list[StreamEntry]:
        """New entries for this consumer, as many as ``count``, without waiting for any."""
        reply = await self.owner.execute(
            self._client,
            "XREADGROUP",
            "GROUP",
            self.group,
            self.consumer,
            "COUNT",
            count,
            "STREAMS",
            self.topic,
            ">",
        )
        if not reply:
            return []
        # [[stream, [[id, [field, value, ...]], ...]]], as redis-py would give it with fields a dict.
        return [
            (entry_id, dict(zip(fields[::2], fields[1::2], strict=True))) for entry_id, fields in reply[0][1]
        ]

    async def _reclaim(self, cursor: str, count: int) -> tuple[str, Sequence[StreamEntry]]:
        """Claim up to ``count`` messages idle for ``processingTimeout`` (their consumer died, or
        their handler failed), continuing the scan of the pending list from ``cursor``."""
        reply = await self._client.xautoclaim(
            self.topic, self.group, self.consumer, self._min_idle_ms, start_id=cursor, count=count
        )
        # Redis 7 also returns IDs of entries trimmed from the stream; it dropped them from the
        # pending list itself. Redis 6.2 returns them as empty entries, skipped in _dispatch.
        return _text(reply[0]), reply[1]

    def _dispatch(self, entries: Sequence[StreamEntry]) -> None:
        for raw_id, fields in entries:
            if raw_id is None or fields is None:
                continue
            entry_id = _text(raw_id)
            if entry_id in self._held:
                # Already being handled here; its lease is renewed, so this is only a late renewal.
                continue
            self._held.add(entry_id)
            task = asyncio.create_task(self._handle(entry_id, fields))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    # --- handling -----------------------------------------------------------------------------

    def _message(self, entry_id: str, fields: dict[bytes | str, bytes | str]) -> Message:
        data, metadata = _fields_message(fields, f"{entry_id} on {self.topic!r}", self.owner.name)
        return Message(self.topic, data, metadata, entry_id)

    async def _handle(self, entry_id: str, fields: dict[bytes | str, bytes | str]) -> None:
        try:
            try:
                await self._handler(self._message(entry_id, fields))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "pubsub %s: handling message %s on %r failed (%s); it stays pending and is "
                    "redelivered after processingTimeout",
                    self.owner.name,
                    entry_id,
                    self.topic,
                    exc or type(exc).__name__,
                )
                return
            try:
                await self._acks.ack(entry_id)
            except (RedisError, OSError) as exc:
                log.warning(
                    "pubsub %s: acknowledging message %s on %r failed (%s); it will be delivered again",
                    self.owner.name,
                    entry_id,
                    self.topic,
                    exc,
                )
        finally:
            self._held.discard(entry_id)
            self._slot_freed.set()

    async def _xack(self, ids: list[str]) -> None:
        await self.owner.execute(self._client, "XACK", self.topic, self.group, *ids)

    async def _renew_leases(self) -> None:
        """Keep the idle time of messages being handled here well below ``processingTimeout``."""
        every = max(0.05, self.owner.processing_timeout / 3)
        while not await self._sleep(every, self._stop_renewing):
            held: list[StreamIdT] = list(self._held)
            if not held:
                continue
            try:
                await self._client.xclaim(self.topic, self.group, self.consumer, 0, held, justid=True)
            except (RedisError, OSError) as exc:
                log.warning(
                    "pubsub %s: renewing %d message(s) on %r failed: %s",
                    self.owner.name,
                    len(held),
                    self.topic,
                    exc,
                )

    async def _leave_group(self) -> None:
        """Leave the group tidy for the next consumer.

        Holding nothing, this consumer is deleted, so consumers of stopped sidecars do not pile up.
        Otherwise it still owns messages whose handling the shutdown interrupted (or that failed):
        their idle time is set to ``processingTimeout`` so that the next sidecar claims them at
        once rather than a whole ``processingTimeout`` later.
        """
        try:
            pending = await self._client.xpending_range(
                self.topic, self.group, min="-", max="+", count=_HAND_BACK_LIMIT, consumername=self.consumer
            )
            if not pending:
                await self._client.xgroup_delconsumer(self.topic, self.group, self.consumer)
            elif self._redelivery:
                ids: list[StreamIdT] = [entry["message_id"] for entry in pending]
                await self._client.xclaim(
                    self.topic, self.group, self.consumer, 0, ids, idle=self._min_idle_ms, justid=True
                )
        except (RedisError, OSError) as exc:
            log.warning("pubsub %s: leaving group %r on %r: %s", self.owner.name, self.group, self.topic, exc)


class _Acks:
    """A subscription's acknowledgements: those asked for in one event-loop turn (handlers that
    finished together) leave as one ``XACK`` with every ID, each handler still learning whether
    its own message was acknowledged."""

    def __init__(self, send: Callable[[list[str]], Awaitable[None]]) -> None:
        self._send = send
        self._ids: list[str] = []
        self._waiters: list[asyncio.Future[None]] = []

    def ack(self, entry_id: str) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        if not self._ids:
            loop.call_soon(self._flush)
        self._ids.append(entry_id)
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        return waiter

    def _flush(self) -> None:
        ids, waiters = self._ids, self._waiters
        self._ids, self._waiters = [], []
        sending = asyncio.ensure_future(self._send(ids))
        sending.add_done_callback(lambda done: _settle(done, waiters))


def _settle(done: asyncio.Future[None], waiters: list[asyncio.Future[None]]) -> None:
    error = done.exception() if not done.cancelled() else asyncio.CancelledError()
    for waiter in waiters:
        if waiter.done():  # its handler was cancelled meanwhile: the message stays pending
            continue
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)

"""``pubsub.jetstream``: NATS JetStream with durable pull consumers (see docs/pubsub-brokers.md).

A topic is a subject (``topicPrefix`` + topic). Publishing waits for JetStream's acknowledgement,
so the message is stored when ``publish`` returns. The stream that holds a subject is ``streamName``
when given, otherwise the stream whose subjects cover it; when there is none, Pillion creates one
stream for that subject alone.

Each consumer group (``durableName``, else ``queueGroupName``, else ``consumerID``, else the app id)
has one durable consumer per topic, shared by all its sidecars: they compete for its messages,
and other groups each get every message. Delivery, and how it differs from Dapr's component:

* A pull consumer, asked for no more messages than the subscription has free handler slots, so no
  message waits in a local buffer while its ``ackWait`` runs out.
* A message is acknowledged only after its handler returned. While the handler runs, the message's
  ``ackWait`` is restarted every third of it (``+WPI``), so a slow handler is not given a duplicate.
* A handler that raised gets its message again after ``ackWait`` (a negative acknowledgement with
  that delay); one cut off by shutdown is released at once for another sidecar. A sidecar that
  dies holds its messages only until their ``ackWait`` runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from components.base import ComponentContext
from components.metadata import FieldType, MetadataError, MetadataField, MetadataSchema
from components.pubsub.base import Handler, Message, PubSubFeature, RetainedMessage, SubscribeOptions
from components.pubsub.handlers import wait_for_handlers
from components.pubsub.naming import expand_consumer_id, safe_name

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext
    from nats.js.api import ConsumerConfig

log = logging.getLogger("pillion.pubsub.jetstream")

# How long one pull request waits on the server for messages before it is renewed.
_PULL_WAIT = 5.0
# Headers JetStream and the NATS client use themselves; they are not message metadata.
_NATS_HEADER_PREFIX = "nats-"
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_LINE_BREAK = re.compile(r"[\r\n]")
_DELIVER_POLICIES = ("all", "last", "new", "sequence", "time", "lastpersubject")

_SCHEMA = MetadataSchema(
    (
        MetadataField("natsURL", required=True, description="NATS server URL, e.g. `nats://localhost:4222`."),
        MetadataField("name", default="pillion", description="Connection name shown by the NATS server."),
        MetadataField("token", default="", sensitive=True, description="Token authentication."),
        MetadataField(
            "tls_client_cert", default="", description="Path of a PEM client certificate for TLS auth."
        ),
        MetadataField("tls_client_key", default="", description="Path of the client certificate's key."),
        MetadataField(
            "jwt",
            default="",
            sensitive=True,
            description="Decentralized JWT auth: not supported yet; setting it stops the sidecar with "
            "a clear error rather than connecting without it.",
        ),
        MetadataField("seedKey", default="", sensitive=True, description="See `jwt`."),
        MetadataField("domain", default="", description="JetStream domain."),
        MetadataField("apiPrefix", default="", description="JetStream API prefix."),
        MetadataField(
            "streamName",
            default="",
            description="The stream holding the topics; it must exist and cover them. Empty: the stream "
            "whose subjects cover the topic, created by Pillion (one per topic) when there is none.",
        ),
        MetadataField(
            "streamMaxAge",
            FieldType.DURATION,
            default=0.0,
            description="Pillion: how long a stream that Pillion creates keeps messages (0: until "
            "deleted by hand, as Redis streams are). A shorter age drops messages no consumer took.",
        ),
        MetadataField(
            "topicPrefix",
            default="",
            description="Pillion: put in front of every topic to make its subject (e.g. `staging.`), "
            "so several environments can share one server. Apps never see it.",
        ),
        MetadataField(
            "consumerID",
            default="",
            description="Consumer group (default: the app id); `{appID}`, `{uuid}`, `{podName}`, "
            "`{namespace}` are replaced. `durableName` or `queueGroupName` take precedence.",
        ),
        MetadataField(
            "durableName",
            default="",
            description="Consumer group name, as in Dapr; Pillion's durable consumer for a topic is "
            "named `<group>_<topic>-<hash>`, so one name serves several topics.",
        ),
        MetadataField(
            "queueGroupName",
            default="",
            description="Used as the consumer group name when `durableName` is empty: the sidecars "
            "of a group share its messages.",
        ),
        MetadataField(
            "deliverPolicy",
            default="",
            choices=_DELIVER_POLICIES,
            description="Where a new consumer starts: `all` (default), `last`, `new`, `sequence` "
            "(with `startSequence`), `time` (with `startTime`), `lastPerSubject`.",
        ),
        MetadataField(
            "deliverAll", FieldType.BOOLEAN, default=False, description="Same as `deliverPolicy: all`."
        ),
        MetadataField(
            "startSequence",
            FieldType.INTEGER,
            default=0,
            description="First stream sequence for a new consumer.",
        ),
        MetadataField(
            "startTime",
            FieldType.INTEGER,
            default=0,
            description="Unix time (seconds) a new consumer starts at.",
        ),
        MetadataField(
            "ackWait",
            FieldType.DURATION,
            default=30.0,
            description="How long a delivered message may go unacknowledged (with no renewal) before "
            "JetStream hands it out again; also the pause before a failed message comes back.",
        ),
        MetadataField(
            "maxDeliver",
            FieldType.INTEGER,
            default=-1,
            description="Most deliveries of one message, then JetStream gives it up (not at-least-once "
            "any more); -1: no limit. Retries to the app are counted by `deliveryMaxAttempts`.",
        ),
        MetadataField(
            "backOff",
            default="",
            description="Comma-separated redelivery delays (e.g. `1s, 5s, 30s`) used instead of "
            "`ackWait` when a message's lease runs out; needs `maxDeliver` above their count.",
        ),
        MetadataField(
            "maxAckPending",
            FieldType.INTEGER,
            default=0,
            description="Most unacknowledged messages of a consumer across its sidecars (0: server "
            "default, 1000).",
        ),
        MetadataField(
            "replicas", FieldType.INTEGER, default=0, description="Consumer replicas (0: the stream's)."
        ),
        MetadataField(
            "memoryStorage", FieldType.BOOLEAN, default=False, description="Keep consumer state in memory."
        ),
        MetadataField(
            "ackPolicy",
            default="explicit",
            choices=("explicit", "all", "none"),
            description="Only `explicit` is accepted: `all` and `none` would acknowledge messages no "
            "handler has finished.",
        ),
        MetadataField(
            "concurrency",
            default="",
            description="`single` (one message at a time, in order), `parallel` (default) or a number "
            "of messages handled at once; a subscription's own `concurrency` wins.",
        ),
        MetadataField(
            "flowControl",
            FieldType.BOOLEAN,
            default=False,
            description="Push-consumer setting; ignored (Pillion pulls, asking only for free slots).",
        ),
        MetadataField(
            "heartbeat", FieldType.DURATION, default=0.0, description="Push-consumer setting; ignored."
        ),
        MetadataField(
            "rateLimit", FieldType.INTEGER, default=0, description="Push-consumer setting; ignored."
        ),
    )
)


def _concurrency(value: str) -> int | None:
    """Dapr's ``single``/``parallel``, or a number; None means "the subscription decides"."""
    lowered = value.strip().lower()
    if lowered in ("", "parallel"):
        return None
    if lowered == "single":
        return 1
    try:
        number = int(lowered)
    except ValueError:
        raise MetadataError("concurrency", f"{value!r} is not single, parallel or a number") from None
    if number < 1:
        raise MetadataError("concurrency", "must be at least 1")
    return number


def _backoff(value: str) -> list[float]:
    field = MetadataField("backOff", FieldType.DURATION)
    return [field.convert(part) for part in value.split(",") if part.strip()]


def _metadata_of(msg: Msg) -> dict[str, str]:
    return {k: v for k, v in (msg.headers or {}).items() if not k.lower().startswith(_NATS_HEADER_PREFIX)}


class JetStreamPubSub:
    schema: ClassVar[MetadataSchema] = _SCHEMA
    # A stream keeps its messages by its limits, whoever acknowledged them.
    features: ClassVar[frozenset[PubSubFeature]] = frozenset({PubSubFeature.RETAINED_MESSAGES})

    def __init__(self, metadata: dict[str, Any], context: ComponentContext) -> None:
        if metadata["jwt"] or metadata["seedKey"]:
            raise MetadataError("jwt", "JWT/seed key authentication is not supported yet; use a token or TLS")
        if metadata["ackPolicy"] != "explicit":
            raise MetadataError(
                "ackPolicy",
                "only 'explicit' keeps at-least-once delivery (a message is acknowledged "
                "after its handler finished)",
            )
        if metadata["ackWait"] <= 0:
            raise MetadataError("ackWait", "must be above zero")
        if metadata["maxDeliver"] == 0 or metadata["maxDeliver"] < -1:
            raise MetadataError("maxDeliver", "must be -1 (no limit) or at least 1")
        if metadata["streamMaxAge"] < 0:
            raise MetadataError("streamMaxAge", "must not be negative")
        self.name = context.name
        self.url: str = metadata["natsURL"]
        self._settings = metadata
        self.prefix: str = metadata["topicPrefix"]
        self.stream_name: str = metadata["streamName"]
        self.group = expand_consumer_id(
            metadata["durableName"] or metadata["queueGroupName"] or metadata["consumerID"], context.app_id
        )
        self.ack_wait: float = metadata["ackWait"]
        self.concurrency = _concurrency(metadata["concurrency"])
        self._consumer_template = self._consumer_config(metadata)
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        # Subjects known to have a stream, so publishing asks nothing more of the server.
        self._stored_subjects: set[str] = set()
        self._subscriptions: set[PullSubscription] = set()

    @staticmethod
    def _consumer_config(metadata: dict[str, Any]) -> ConsumerConfig:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        policy = "all" if metadata["deliverAll"] else metadata["deliverPolicy"]
        start_time: datetime | None = None
        if metadata["startSequence"] > 0 and policy in ("", "sequence"):
            policy = "sequence"
        if metadata["startTime"] > 0 and policy in ("", "time"):
            policy = "time"
            start_time = datetime.fromtimestamp(metadata["startTime"], UTC)
        if policy == "sequence" and metadata["startSequence"] <= 0:
            raise MetadataError("startSequence", "deliverPolicy 'sequence' needs a startSequence above 0")
        if policy == "time" and start_time is None:
            raise MetadataError("startTime", "deliverPolicy 'time' needs a startTime")
        deliver = {
            "": DeliverPolicy.ALL,
            "all": DeliverPolicy.ALL,
            "last": DeliverPolicy.LAST,
            "new": DeliverPolicy.NEW,
            "sequence": DeliverPolicy.BY_START_SEQUENCE,
            "time": DeliverPolicy.BY_START_TIME,
            "lastpersubject": DeliverPolicy.LAST_PER_SUBJECT,
        }[policy]
        backoff = _backoff(metadata["backOff"])
        if backoff and not (metadata["maxDeliver"] > len(backoff)):
            raise MetadataError("backOff", "needs maxDeliver set above the number of delays")
        return ConsumerConfig(
            deliver_policy=deliver,
            opt_start_seq=metadata["startSequence"] if deliver is DeliverPolicy.BY_START_SEQUENCE else None,
            opt_start_time=start_time,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=metadata["ackWait"],
            max_deliver=metadata["maxDeliver"],
            backoff=backoff or None,
            max_ack_pending=metadata["maxAckPending"] or None,
            num_replicas=metadata["replicas"] or None,
            mem_storage=True if metadata["memoryStorage"] else None,
        )

    # --- life cycle -------------------------------------------------------------------------

    async def init(self) -> None:
        from nats.errors import Error as NatsError

        options: dict[str, Any] = {
            "name": self._settings["name"],
            # Reconnect for as long as the sidecar runs; consumers pick up where they were.
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 1,
            "connect_timeout": 5,
            "allow_reconnect": True,
            "error_cb": self._on_error,
        }
        if self._settings["token"]:
            options["token"] = self._settings["token"]
        if self._settings["tls_client_cert"]:
            context = ssl.create_default_context()
            context.load_cert_chain(
                self._settings["tls_client_cert"], self._settings["tls_client_key"] or None
            )
            options["tls"] = context
        js_options: dict[str, Any] = {}
        if self._settings["domain"]:
            js_options["domain"] = self._settings["domain"]
        if self._settings["apiPrefix"]:
            js_options["prefix"] = self._settings["apiPrefix"]
        problems: list[str] = []

        async def note(exc: Exception) -> None:
            problems.append(str(exc) or type(exc).__name__)

        try:
            # A probe that gives up at once, so that a wrong natsURL stops the sidecar with one line;
            # the client proper then reconnects for as long as the sidecar runs.
            probe = await _dial(
                self.url,
                {**options, "allow_reconnect": False, "max_reconnect_attempts": 1, "error_cb": note},
            )
        except (NatsError, OSError, TimeoutError) as exc:
            reason = problems[-1] if problems else str(exc) or type(exc).__name__
            raise RuntimeError(f"cannot reach NATS at {self.url}: {reason}") from None
        await probe.close()
        client = await _dial(self.url, options)
        js = client.jetstream(**js_options)
        try:
            await js.account_info()
        except BaseException as exc:
            await asyncio.shield(client.close())
            if not isinstance(exc, Exception):
                raise
            raise RuntimeError(
                f"NATS at {self.url} has no JetStream (start nats-server with -js): {exc}"
            ) from None
        self._nc, self._js = client, js

    async def _on_error(self, exc: Exception) -> None:
        log.warning("pubsub %s: NATS connection: %s", self.name, exc or type(exc).__name__)

    async def close(self) -> None:
        subscriptions, self._subscriptions = list(self._subscriptions), set()
        await asyncio.gather(*(s.close() for s in subscriptions))
        if self._nc is not None:
            await self._nc.close()
        self._nc = self._js = None

    async def ping(self) -> None:
        if self._nc is None or not self._nc.is_connected:
            raise RuntimeError(f"pubsub {self.name} is not connected to NATS")
        await self._nc.flush(timeout=2)

    def _jetstream(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError(f"pubsub {self.name} is not connected")
        return self._js

    # --- streams ------------------------------------------------------------------------------

    def subject(self, topic: str) -> str:
        return self.prefix + topic

    async def stream_for(self, subject: str) -> str:
        """The stream that stores ``subject``, created when no stream covers it (and no
        ``streamName`` is configured)."""
        from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
        from nats.js.errors import BadRequestError, NotFoundError

        js = self._jetstream()
        if self.stream_name:
            try:
                info = await js.stream_info(self.stream_name)
            except NotFoundError:
                raise RuntimeError(
                    f"stream {self.stream_name!r} (streamName) does not exist; create it, or leave "
                    "streamName empty so that Pillion creates a stream per topic"
                ) from None
            if not await self._covers(self.stream_name, subject):
                raise RuntimeError(
                    f"stream {self.stream_name!r} (streamName) does not hold subject {subject!r}; "
                    f"its subjects are {info.config.subjects}"
                )
            return self.stream_name
        try:
            return await js.find_stream_name_by_subject(subject)
        except NotFoundError:
            pass
        name = safe_name(subject)
        config = StreamConfig(
            name=name,
            description=f"Pillion pub/sub topic {subject}",
            subjects=[subject],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=self._settings["streamMaxAge"] or None,
        )
        try:
            await js.add_stream(config)
            log.info("pubsub %s: created stream %s for subject %s", self.name, name, subject)
        except BadRequestError:
            # Another sidecar created it a moment ago, perhaps with other limits: use what is there.
            return await js.find_stream_name_by_subject(subject)
        return name

    async def _covers(self, stream: str, subject: str) -> bool:
        from nats.js.errors import NotFoundError

        try:
            return await self._jetstream().find_stream_name_by_subject(subject) == stream
        except NotFoundError:
            return False

    # --- publish and subscribe --------------------------------------------------------------

    async def publish(self, topic: str, data: bytes, metadata: dict[str, str]) -> None:
        from nats.js.errors import NoStreamResponseError

        subject = self.subject(topic)
        # NATS headers are MIME-style lines: a name with a colon or a value with a line break
        # would corrupt the block, so such entries stay behind.
        headers = {k: v for k, v in metadata.items() if _HEADER_NAME.match(k) and not _LINE_BREAK.search(v)}
        message_id = metadata.get("cloudevent.id")
        if message_id:
            # JetStream drops a second message with the same id within its duplicate window.
            headers["Nats-Msg-Id"] = message_id
        js = self._jetstream()
        if self._nc is not None and not self._nc.is_connected:
            # The client would buffer the message until it reconnects, holding the request until
            # the ack times out: say at once that the server is away.
            raise RuntimeError(f"not connected to NATS at {self.url} (reconnecting)")
        if subject not in self._stored_subjects:
            await self.stream_for(subject)
            self._stored_subjects.add(subject)
        try:
            await js.publish(subject, data, headers=headers or None)
        except NoStreamResponseError:
            # The stream was deleted since: make it again, once.
            self._stored_subjects.discard(subject)
            await self.stream_for(subject)
            self._stored_subjects.add(subject)
            await js.publish(subject, data, headers=headers or None)

    # --- retained messages (RETAINED_MESSAGES) ------------------------------------------------

    async def _stored_in(self, topic: str) -> str | None:
        """The stream holding ``topic``; None when there is none (nothing was ever published)."""
        from nats.js.errors import NotFoundError

        try:
            return self.stream_name or await self._jetstream().find_stream_name_by_subject(
                self.subject(topic)
            )
        except NotFoundError:
            return None

    async def _stream_message(
        self, stream: str, topic: str, seq: int, following: bool
    ) -> RetainedMessage | None:
        """The message ``seq`` on the topic's subject, or with ``following`` the first from ``seq`` on."""
        from nats.js.errors import NotFoundError

        subject = self.subject(topic)
        try:
            if following:
                raw = await self._jetstream().get_msg(stream, seq, subject=subject, next=True)
            else:
                raw = await self._jetstream().get_msg(stream, seq)
        except NotFoundError:
            return None
        if raw.subject != subject or raw.seq is None:
            return None
        headers = {
            k: v for k, v in (raw.headers or {}).items() if not k.lower().startswith(_NATS_HEADER_PREFIX)
        }
        published = raw.time.timestamp() if raw.time is not None else 0.0
        return RetainedMessage(str(raw.seq), topic, raw.data or b"", headers, published)

    async def retained(self, topic: str, limit: int) -> list[RetainedMessage]:
        stream = await self._stored_in(topic)
        found: list[RetainedMessage] = []
        seq = 1
        while stream is not None and len(found) < limit:
            message = await self._stream_message(stream, topic, seq, following=True)
            if message is None:
                break
            found.append(message)
            seq = int(message.id) + 1
        return found

    async def retained_message(self, topic: str, message_id: str) -> RetainedMessage | None:
        stream = await self._stored_in(topic)
        if stream is None or not (message_id.isascii() and message_id.isdigit()):
            return None
        if not 1 <= int(message_id) < 2**64:  # a stream sequence is a uint64
            return None
        return await self._stream_message(stream, topic, int(message_id), following=False)

    async def delete_retained(self, topic: str, message_ids: Sequence[str]) -> int:
        stream = await self._stored_in(topic)
        deleted = 0
        for message_id in message_ids:
            # Only this topic's messages: the stream may hold other subjects too.
            if stream is not None and await self.retained_message(topic, message_id) is not None:
                await self._jetstream().delete_msg(stream, int(message_id))
                deleted += 1
        return deleted

    async def subscribe(self, topic: str, handler: Handler, options: SubscribeOptions) -> PullSubscription:
        from nats.js.errors import BadRequestError

        js = self._jetstream()
        subject = self.subject(topic)
        stream = await self.stream_for(subject)
        self._stored_subjects.add(subject)
        durable = safe_name(f"{self.group}_{topic}")
        config = replace(self._consumer_template, durable_name=durable, name=durable, filter_subject=subject)
        try:
            await js.add_consumer(stream, config)
        except BadRequestError as exc:
            # It exists with other settings (changed metadata): keep using it as it is.
            log.warning(
                "pubsub %s: consumer %s on stream %s keeps its existing settings (%s)",
                self.name,
                durable,
                stream,
                exc.description,
            )
        pull = await js.pull_subscribe_bind(durable=durable, stream=stream)
        explicit = any(k.lower() == "concurrency" for k in options.metadata)
        slots = options.concurrency if explicit or self.concurrency is None else self.concurrency
        subscription = PullSubscription(self, topic, pull, handler, max(1, slots))
        subscription.start()
        self._subscriptions.add(subscription)
        return subscription

    def forget(self, subscription: PullSubscription) -> None:
        self._subscriptions.discard(subscription)


class PullSubscription:
    """One sidecar's share of a durable consumer: a pull loop and the handlers it started."""

    def __init__(
        self,
        owner: JetStreamPubSub,
        topic: str,
        pull: JetStreamContext.PullSubscription,
        handler: Handler,
        slots: int,
    ) -> None:
        self.owner = owner
        self.topic = topic
        self._pull = pull
        self._handler = handler
        self._slots = slots
        self._handlers: set[asyncio.Task[None]] = set()
        # Messages whose handler is running: one loop renews them all (no task or timer each).
        self._held: dict[int, Msg] = {}  # by id(): nats-py's Msg is not hashable
        self._slot_freed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        self._reader = asyncio.create_task(self._read(), name=f"jetstream-{self.topic}")
        self._renewer = asyncio.create_task(self._renew_held(), name=f"jetstream-renew-{self.topic}")

    async def close(self) -> None:
        """Stop pulling, let the handlers in flight finish (acknowledging those that succeed)."""
        if self._closed:
            return
        self._closed = True
        self.owner.forget(self)
        if self._reader is not None:
            # A pull cut short leaves nothing behind: messages it had asked for come back after ackWait.
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await wait_for_handlers(self._handlers)
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._pull.unsubscribe()

    async def _read(self) -> None:
        from nats.errors import Error as NatsError

        failures = 0
        while True:
            free = self._slots - len(self._handlers)
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            try:
                messages = await self._pull.fetch(free, timeout=_PULL_WAIT)
            except TimeoutError:
                failures = 0
                continue
            except (NatsError, OSError) as exc:
                if failures == 0:
                    log.warning(
                        "pubsub %s: pulling %r failed (%s); retrying", self.owner.name, self.topic, exc
                    )
                await asyncio.sleep(min(5.0, 0.1 * 2**failures))
                failures += 1
                continue
            failures = 0
            for msg in messages:
                task = asyncio.create_task(self._handle(msg))
                self._handlers.add(task)
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._handlers.discard(task)
        self._slot_freed.set()

    async def _handle(self, msg: Msg) -> None:
        owner = self.owner
        meta = msg.metadata
        message = Message(self.topic, msg.data, _metadata_of(msg), str(meta.sequence.stream))
        self._held[id(msg)] = msg
        try:
            await self._handler(message)
        except asyncio.CancelledError:
            # Shutting down before the app answered: free it for another sidecar now.
            with contextlib.suppress(Exception):
                await asyncio.shield(msg.nak())
            raise
        except Exception as exc:
            log.warning(
                "pubsub %s: handling message %s on %r failed (%s); it comes back after ackWait",
                owner.name,
                message.id,
                self.topic,
                exc or type(exc).__name__,
            )
            with contextlib.suppress(Exception):
                await msg.nak(delay=owner.ack_wait)
            return
        finally:
            self._held.pop(id(msg), None)
        try:
            await msg.ack()
        except Exception as exc:
            log.warning(
                "pubsub %s: acknowledging message %s on %r failed (%s); it will be delivered again",
                owner.name,
                message.id,
                self.topic,
                exc,
            )

    async def _renew_held(self) -> None:
        """Tell JetStream, every third of ackWait, that the messages being handled still are, so
        a slow handler's message is not redelivered meanwhile."""
        every = max(0.05, self.owner.ack_wait / 3)
        while True:
            await asyncio.sleep(every)
            for msg in list(self._held.values()):
                with contextlib.suppress(Exception):
                    await msg.in_progress()


async def _dial(url: str, options: dict[str, Any]) -> NATS:
    """A connected client; one whose connect failed or was cancelled is closed, not left with an
    open socket."""
    from nats.aio.client import Client

    client = Client()
    try:
        await client.connect(url, **options)
    except BaseException:
        await asyncio.shield(client.close())
        raise
    return client

"""The pub/sub building block: publishing (CloudEvents, topic scopes) and the app's subscriptions.

It talks to brokers only through ``components.pubsub.base``. Delivery to the app lives in
``runtime.delivery.handler``, which is imported only once subscriptions start (it needs the HTTP client).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, cast

from components.pubsub.base import Message, PubSub, PubSubFeature, SubscribeOptions, message_ttl
from components.pubsub.base import Subscription as BrokerSubscription
from runtime import errors
from runtime.blocks.base import BlockContext, LoadedComponent
from runtime.compat import cloudevents, gojson
from runtime.delivery.subscriptions import Subscription, merge, parse_go_bool, streaming
from runtime.lifecycle.deadlines import CLOSE_TIMEOUT
from runtime.observability.tracing import Span, Tracer

if TYPE_CHECKING:
    from runtime.delivery.event_sink import AppConnection, EventSink
    from runtime.delivery.handler import Deliverer
    from runtime.observability.metrics import Metrics
    from runtime.resources.resiliency import Policy, Resiliency

log = logging.getLogger("pillion.pubsub")


# --- topic scopes (docs/pubsub.md) ------------------------------------------------------------


def _topics(text: str) -> list[str]:
    return list(dict.fromkeys(text.replace(" ", "").split(","))) if text else []


def _scoped_topics(text: str, app_id: str) -> list[str]:
    found: list[str] = []
    for part in text.replace(" ", "").split(";") if text else []:
        app, equals, topics = part.partition("=")
        if equals and app == app_id:
            found.extend(topics.split(","))
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class TopicScopes:
    allowed: frozenset[str] = frozenset()
    protected: frozenset[str] = frozenset()
    publishing: frozenset[str] = frozenset()
    subscribing: frozenset[str] = frozenset()

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], app_id: str) -> TopicScopes:
        return cls(
            allowed=frozenset(_topics(str(metadata.get("allowedTopics") or ""))),
            protected=frozenset(_topics(str(metadata.get("protectedTopics") or ""))),
            publishing=frozenset(_scoped_topics(str(metadata.get("publishingScopes") or ""), app_id)),
            subscribing=frozenset(_scoped_topics(str(metadata.get("subscriptionScopes") or ""), app_id)),
        )

    def _permits(self, topic: str, scoped: frozenset[str]) -> bool:
        # daprd's IsOperationAllowed: allowedTopics first, then the app's own scope, which a
        # protected topic requires.
        if self.allowed and topic not in self.allowed:
            return False
        if topic not in self.protected and not scoped:
            return True
        return topic in scoped

    def may_publish(self, topic: str) -> bool:
        return self._permits(topic, self.publishing)

    def may_subscribe(self, topic: str) -> bool:
        return self._permits(topic, self.subscribing)


# --- publishing --------------------------------------------------------------------------------


@dataclass
class BrokerEntry:
    name: str
    broker: PubSub
    scopes: TopicScopes
    # The component's typed metadata: delivery defaults (deliveryMaxAttempts, ...) and concurrency.
    settings: dict[str, Any] = field(default_factory=dict)
    # Resiliency policies of the component: publishing (outbound), deliveries (inbound).
    outbound: Policy | None = None
    inbound: Policy | None = None

    async def publish(self, topic: str, data: bytes, metadata: dict[str, str]) -> None:
        if self.outbound is None:
            await self.broker.publish(topic, data, metadata)
        else:
            await self.outbound.run(lambda: self.broker.publish(topic, data, metadata))

    @property
    def expires_messages(self) -> bool:
        return PubSubFeature.MESSAGE_TTL in self.broker.features


@dataclass(slots=True)
class Publication:
    """One message to publish, as a transport read it."""

    data: bytes
    content_type: str
    metadata: dict[str, str]


@dataclass(slots=True)
class BulkEntry:
    entry_id: str
    publication: Publication


@dataclass(slots=True)
class FailedEntry:
    entry_id: str
    error: str


@dataclass
class _Running:
    handle: BrokerSubscription
    deliverer: Deliverer
    # Set to stop this subscription: its waiting deliveries give up and the broker keeps them.
    stopping: asyncio.Event


@dataclass
class _Stream:
    subscription: Subscription
    running: _Running


class PubSubBlock:
    kind: ClassVar[str] = "pubsub"

    def __init__(
        self,
        app_id: str,
        entries: Sequence[BrokerEntry],
        metrics: Metrics | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.app_id = app_id
        self._entries = {entry.name: entry for entry in entries}
        self.metrics = metrics
        self.tracer = tracer or Tracer()
        self.resiliency: Resiliency | None = None
        self._declared: list[Subscription] = []
        self._programmatic: list[Subscription] = []
        # Per (pubsub, topic): the subscriptions delivering now.
        self._running: dict[tuple[str, str], _Running] = {}
        self._channel: AppConnection | None = None
        # Streaming subscriptions on the gRPC API, listed in metadata as STREAMING.
        self._streams: list[_Stream] = []
        self._stopping = asyncio.Event()
        # Starting, reloading and stopping subscriptions take turns.
        self._changing = asyncio.Lock()
        # Pubsubs installed or removed since subscriptions last (re)started: theirs restart.
        self._swapped: set[str] = set()

    @classmethod
    def create(cls, context: BlockContext) -> PubSubBlock:
        block = cls(context.app_id, [], context.metrics, context.tracer)
        block.resiliency = context.resiliency
        return block

    # --- the component life cycle (runtime/lifecycle/component_set.py) -----------------------------------

    def build(self, component: LoadedComponent) -> BrokerEntry:
        scopes = TopicScopes.from_metadata(component.metadata, self.app_id)
        broker = cast(PubSub, component.instance)
        name = component.resource.name
        entry = BrokerEntry(name, broker, scopes, component.metadata)
        if self.resiliency is not None:
            entry.outbound = self.resiliency.for_component(name, "outbound", "Pubsub")
            entry.inbound = self.resiliency.for_component(name, "inbound", "Pubsub")
        return entry

    def capabilities(self, entry: BrokerEntry) -> list[str]:
        return sorted(str(f) for f in entry.broker.features)

    def install(self, name: str, entry: BrokerEntry | None) -> None:
        """Publishing uses ``entry`` at once; its subscriptions move to it in :meth:`reload`."""
        if entry is None:
            self._entries.pop(name, None)
        else:
            self._entries[name] = entry
        self._swapped.add(name)

    @property
    def has_brokers(self) -> bool:
        return bool(self._entries)

    def broker(self, name: str) -> BrokerEntry | None:
        return self._entries.get(name)

    def entry(self, name: str, topic: str, metadata: Mapping[str, str]) -> BrokerEntry:
        """The broker for a publish request, checked in daprd's order: name, broker, topic."""
        if not name:
            raise errors.pubsub_name_empty(metadata)
        entry = self._entries.get(name)
        if entry is None:
            raise errors.pubsub_not_found(name, metadata)
        if not topic:
            raise errors.pubsub_topic_empty(name, metadata)
        return entry

    @staticmethod
    def raw_payload(entry: BrokerEntry, metadata: Mapping[str, str]) -> bool:
        """``metadata.rawPayload`` (Go's ParseBool); 400 when it is not a boolean."""
        value = metadata.get("rawPayload", "")
        try:
            return parse_go_bool(value) if value else False
        except ValueError:
            problem = f"rawPayload value must be a valid boolean: actual is '{value}'"
        raise errors.pubsub_bad_metadata(entry.name, metadata, problem)

    @staticmethod
    def ttl(entry: BrokerEntry, metadata: Mapping[str, str]) -> float | None:
        """The message TTL; 400 when unreadable (daprd ignores a bad TTL, which hides typos)."""
        try:
            return message_ttl(metadata)
        except ValueError as exc:
            raise errors.pubsub_bad_metadata(entry.name, metadata, str(exc)) from None

    def _check_scope(self, entry: BrokerEntry, topic: str) -> None:
        if not entry.scopes.may_publish(topic):
            raise errors.pubsub_forbidden(entry.name, topic, self.app_id)

    def _wrap(
        self, entry: BrokerEntry, topic: str, publication: Publication, traceparent: str, tracestate: str
    ) -> bytes:
        """The bytes that go on the broker: the CloudEvent envelope (docs/pubsub.md: Publishing)."""
        metadata = publication.metadata
        if cloudevents.is_cloudevent(publication.content_type):
            try:
                envelope = cloudevents.from_cloudevent(
                    publication.data,
                    topic=topic,
                    pubsub=entry.name,
                    traceparent=traceparent,
                    tracestate=tracestate,
                )
            except ValueError as exc:
                raise errors.pubsub_cloud_event_creation(entry.name, self.app_id, str(exc)) from None
        else:
            ttl = self.ttl(entry, metadata)
            expires = ttl is not None and not entry.expires_messages
            return cloudevents.encode_new_envelope(
                app_id=self.app_id,
                topic=topic,
                pubsub=entry.name,
                content_type=publication.content_type,
                data=publication.data,
                traceparent=traceparent,
                tracestate=tracestate,
                metadata=metadata,
                expiration=cloudevents.expiration(ttl) if expires and ttl is not None else None,
            )
        ttl = self.ttl(entry, metadata)
        if ttl is not None and not entry.expires_messages:
            cloudevents.set_expiration(envelope, ttl)
        return gojson.encode(envelope)

    async def publish(
        self,
        entry: BrokerEntry,
        topic: str,
        publication: Publication,
        traceparent: str,
        tracestate: str,
    ) -> None:
        """Publish one message; ``traceparent`` is the publish's own span (the request's)."""
        metadata = publication.metadata
        raw = self.raw_payload(entry, metadata)
        if raw:
            self.ttl(entry, metadata)
            data = publication.data
            metadata = _with_trace(metadata, traceparent, tracestate)
        else:
            data = self._wrap(entry, topic, publication, traceparent, tracestate)
        self._check_scope(entry, topic)
        try:
            await entry.publish(topic, data, metadata)
        except Exception as exc:
            self._count_failure(entry)
            raise errors.pubsub_publish_failed(entry.name, topic, str(exc) or type(exc).__name__) from None
        if self.metrics is not None:
            self.metrics.published(entry.name, topic)

    async def bulk_publish(
        self,
        entry: BrokerEntry,
        topic: str,
        entries: Sequence[BulkEntry],
        raw: bool,
        traceparent: str,
        tracestate: str,
    ) -> list[FailedEntry]:
        """Publish each entry in order; the failed ones come back with their error.

        Each entry gets its own span, a child of ``traceparent`` (the request's), as in daprd.
        """
        ready: list[tuple[str, bytes, dict[str, str], Span]] = []
        for item in entries:
            publication = item.publication
            span = self.tracer.start(f"publish/{topic}", traceparent, tracestate, "producer")
            metadata = publication.metadata
            if raw:
                self.ttl(entry, metadata)
                data = publication.data
                metadata = _with_trace(metadata, span.traceparent, span.tracestate)
            else:
                data = self._wrap(entry, topic, publication, span.traceparent, span.tracestate)
            ready.append((item.entry_id, data, metadata, span))
        self._check_scope(entry, topic)
        failed: list[FailedEntry] = []
        for entry_id, data, metadata, span in ready:
            try:
                await entry.publish(topic, data, metadata)
            except Exception as exc:
                self._count_failure(entry)
                failed.append(FailedEntry(entry_id, str(exc) or type(exc).__name__))
                span.finish(error=failed[-1].error)
            else:
                span.finish()
        if self.metrics is not None and len(ready) > len(failed):
            self.metrics.published(entry.name, topic, len(ready) - len(failed))
        return failed

    def _count_failure(self, entry: BrokerEntry) -> None:
        if self.metrics is not None:
            self.metrics.component_error(entry.name, "publish")

    # --- subscriptions ---------------------------------------------------------------------------

    def declare(self, subscriptions: Sequence[Subscription]) -> None:
        """The declarative subscriptions from the resources path (already compiled)."""
        self._declared = list(subscriptions)

    def subscriptions(self) -> list[Subscription]:
        return merge(self._declared, self._programmatic)

    def describe_subscriptions(self) -> list[dict[str, Any]]:
        listed = self.subscriptions() + [stream.subscription for stream in self._streams]
        return [subscription.describe() for subscription in listed]

    async def subscribe_stream(
        self,
        pubsubname: str,
        topic: str,
        metadata: Mapping[str, str],
        dead_letter_topic: str,
        sink: EventSink,
    ) -> _Stream:
        """Start a streaming subscription delivering to ``sink``, with the same delivery rules as an
        app's subscription. ``APIError`` when the pubsub is unknown or the topic not allowed;
        ``SubscriptionError`` when the metadata cannot be used."""
        from runtime.delivery.handler import Deliverer, DeliveryPolicy

        entry = self.entry(pubsubname, topic, metadata)
        if not entry.scopes.may_subscribe(topic):
            raise errors.pubsub_forbidden(entry.name, topic, self.app_id)
        subscription = streaming(pubsubname, topic, dict(metadata), dead_letter_topic)
        policy = DeliveryPolicy.resolve(entry.settings, subscription.overrides)
        stopping = asyncio.Event()
        deliverer = Deliverer(
            subscription, policy, sink, self._dead_letter(entry), stopping, self.metrics, self.tracer
        )
        options = SubscribeOptions(concurrency=policy.concurrency, metadata=dict(subscription.metadata))
        handle = await entry.broker.subscribe(topic, deliverer, options)
        stream = _Stream(subscription, _Running(handle, deliverer, stopping))
        self._streams.append(stream)
        log.info("streaming subscription %s started", subscription.label())
        return stream

    async def unsubscribe_stream(self, stream: _Stream, drain_timeout: float) -> None:
        """Stop a streaming subscription; deliveries waiting for an ack are handed back to the broker."""
        if stream in self._streams:
            self._streams.remove(stream)
        running = stream.running
        running.stopping.set()
        try:
            await asyncio.wait_for(running.handle.close(), drain_timeout)
        except TimeoutError:
            running.deliverer.cancel_all()
        log.info("streaming subscription %s stopped", stream.subscription.label())

    async def start_subscriptions(self, channel: AppConnection) -> None:
        """Ask the app for its subscriptions, then start delivering every one in scope.

        ``SubscriptionError`` when the app's answer cannot be used (a rule that does not compile).
        The channel stays the caller's: it outlives the subscriptions.
        """
        from runtime.delivery.event_sink import AppCallFailed

        async with self._changing:
            self._channel = channel
            self._swapped.clear()  # every subscription starts on the entries installed now
            try:
                self._programmatic = await channel.programmatic_subscriptions()
            except AppCallFailed as exc:
                log.error("%s; only declarative subscriptions are started", exc)
            for subscription in self.subscriptions():
                if self._stopping.is_set():
                    return
                await self._start(subscription)

    async def _start(self, subscription: Subscription) -> None:
        from runtime.delivery.handler import Deliverer, DeliveryPolicy

        channel = self._channel
        assert channel is not None
        entry = self._entries.get(subscription.pubsubname)
        where = f"subscription {subscription.label()}"
        if entry is None:
            log.warning(
                "%s names pubsub %r, which is not loaded; nothing is delivered to it",
                where,
                subscription.pubsubname,
            )
            return
        if subscription.bulk_enabled:
            log.error("%s asks for bulkSubscribe, which Pillion does not offer yet; not started", where)
            return
        if not entry.scopes.may_subscribe(subscription.topic):
            log.warning(
                "%s is not allowed for app id %s (subscriptionScopes); not started", where, self.app_id
            )
            return
        policy = DeliveryPolicy.resolve(
            entry.settings, subscription.overrides, bool(subscription.dead_letter_topic), entry.inbound
        )
        stopping = asyncio.Event()
        deliverer = Deliverer(
            subscription, policy, channel, self._dead_letter(entry), stopping, self.metrics, self.tracer
        )
        options = SubscribeOptions(concurrency=policy.concurrency, metadata=dict(subscription.metadata))
        try:
            handle = await entry.broker.subscribe(subscription.topic, deliverer, options)
        except Exception as exc:
            log.error("%s could not start: %s", where, exc)
            return
        self._running[subscription.key] = _Running(handle, deliverer, stopping)
        log.info("%s delivers to %s", where, ", ".join(r.path for r in subscription.rules))

    def _dead_letter(self, entry: BrokerEntry) -> Callable[[str, Message, str], Awaitable[None]]:
        from runtime.blocks.deadletters import mark

        async def republish(topic: str, message: Message, reason: str) -> None:
            # The original bytes, so the app sees the original topic in the event; the metadata
            # gains why and when, for whoever inspects the dead letters. A publish like any other:
            # under the pubsub's outbound Resiliency policy.
            await entry.publish(topic, message.data, mark(message, reason, self.app_id))

        return republish

    def in_flight(self) -> dict[tuple[str, str], int]:
        """Per (pubsub, topic): messages handed to the app or waiting to be retried now.

        Read from the metrics thread while the loop changes the subscriptions: a snapshot.
        """
        return {key: running.deliverer.in_flight for key, running in list(self._running.items())}

    @property
    def started(self) -> bool:
        """Whether the subscriptions have started (the app was asked for its own)."""
        return self._channel is not None

    async def reload(self, declared: Sequence[Subscription], drain_timeout: float) -> None:
        """Resource files changed: ``declared`` are all the declarative subscriptions now, and
        the pubsubs added, replaced or removed have been installed already.

        A subscription restarts when its definition changed or its pubsub was swapped; the
        others go on delivering undisturbed. Before the subscriptions have started nothing
        restarts: they start from the new definitions.
        """
        async with self._changing:
            swapped, self._swapped = self._swapped, set()
            before = {s.key: s for s in self.subscriptions()}
            self._declared = list(declared)
            after = {s.key: s for s in self.subscriptions()}
            changed = [
                key
                for key in sorted(before.keys() | after.keys())
                if before.get(key) != after.get(key) or key[0] in swapped
            ]
            if self._channel is None or self._stopping.is_set():
                return
            await self._stop([key for key in changed if key in self._running], drain_timeout)
            for key in changed:
                if key in after:
                    await self._start(after[key])
                else:
                    log.info("subscription %s/%s stopped: it is no longer defined", *key)

    async def _stop(self, keys: Sequence[tuple[str, str]], drain_timeout: float) -> None:
        """Stop taking messages; deliveries in flight get ``drain_timeout`` seconds to finish."""
        running = [self._running.pop(key) for key in keys]
        for subscription in running:
            subscription.stopping.set()
        closing = [asyncio.ensure_future(r.handle.close()) for r in running]
        if not closing:
            return
        _, late = await asyncio.wait(closing, timeout=drain_timeout)
        if late:
            log.warning("%d subscriptions still delivering after %gs; interrupting", len(late), drain_timeout)
            for subscription in running:
                subscription.deliverer.cancel_all()
            _, stuck = await asyncio.wait(late, timeout=CLOSE_TIMEOUT)
            if stuck:
                log.error("%d subscriptions did not close within %gs; left behind", len(stuck), CLOSE_TIMEOUT)
            for task in stuck:
                task.cancel()
        for task in closing:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.warning("closing a subscription failed: %s", task.exception())

    async def stop_subscriptions(self, drain_timeout: float) -> None:
        """Stop every subscription; deliveries in flight get ``drain_timeout`` seconds to finish."""
        self._stopping.set()
        async with self._changing:
            await self._stop(list(self._running), drain_timeout)
            self._channel = None


def _with_trace(metadata: dict[str, str], traceparent: str, tracestate: str) -> dict[str, str]:
    """A raw payload has no envelope: its trace travels in the message metadata, where delivery
    finds it (daprd loses the trace of raw messages, dapr/dapr#7918)."""
    if "traceparent" in metadata:
        return metadata
    added = {"traceparent": traceparent}
    if tracestate:
        added["tracestate"] = tracestate
    return {**metadata, **added}

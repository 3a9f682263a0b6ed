"""Delivering messages to the app (docs/pubsub.md: Delivery).

A :class:`Deliverer` is the handler a broker calls for each message of one subscription. It routes
the event, POSTs it to the app and reads the answer. RETRY, errors and timeouts are tried again
with exponential backoff up to ``deliveryMaxAttempts``; then, as for DROP and 404, the message goes
to the subscription's dead-letter topic if it has one, otherwise it is dropped with a warning.
Either way the handler returns and the broker removes the message, so a poison message never
blocks its topic. While the app's port is closed, or its health checks fail, nothing is tried and
no attempt is used up.

The handler raises only when it could not settle the message (the dead-letter publish failed, or
the sidecar is stopping): the broker then keeps the message and hands it out again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from components.pubsub.base import Message
from runtime.compat import cloudevents, gojson
from runtime.delivery.event_sink import AppUnreachable, Envelope, EventSink, Outcome
from runtime.delivery.subscriptions import RoutingError, Subscription
from runtime.observability.tracing import Span, Tracer

if TYPE_CHECKING:
    from runtime.observability.metrics import Metrics
    from runtime.resources.resiliency import Policy

log = logging.getLogger("pillion.pubsub")

DEFAULT_CONCURRENCY = 10
# Tries per message without a dead-letter topic: daprd hands the failure back to the broker, whose
# redelivery may lose it; Pillion keeps trying instead (docs/invocation.md).
_ATTEMPTS_WITHOUT_DEAD_LETTER = 5
_BACKOFF_MULTIPLIER = 1.5
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Headers the sidecar sets itself; message metadata with these names is not passed on.
_OWN_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "transfer-encoding",
        "connection",
        "host",
        "traceparent",
        "tracestate",
        "dapr-api-token",
    }
)

# (dead-letter topic, message, why it is given up)
DeadLetter = Callable[[str, Message, str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    max_attempts: int
    retry_interval: float
    max_retry_interval: float
    timeout: float | None
    concurrency: int

    @classmethod
    def resolve(
        cls,
        defaults: Mapping[str, Any],
        overrides: Mapping[str, Any],
        dead_letter: bool = False,
        inbound: Policy | None = None,
    ) -> DeliveryPolicy:
        """The component's settings, each overridden by the subscription's metadata when given.

        Without ``deliveryMaxAttempts`` anywhere: a Resiliency inbound retry policy decides, else
        daprd's default, one try when there is a dead-letter topic (docs/invocation.md).
        """
        merged = {**defaults, **overrides}
        if inbound is not None:
            merged = {**merged, **inbound.delivery_settings(), **overrides}
        attempts = merged["deliveryMaxAttempts"]
        if attempts is None:
            attempts = 1 if dead_letter else _ATTEMPTS_WITHOUT_DEAD_LETTER
        concurrency = merged.get("concurrency")
        timeout = float(merged["deliveryTimeout"])
        return cls(
            max_attempts=int(attempts),
            retry_interval=float(merged["deliveryRetryInterval"]),
            max_retry_interval=float(merged["deliveryMaxRetryInterval"]),
            timeout=timeout if timeout > 0 else None,
            concurrency=concurrency
            if isinstance(concurrency, int) and concurrency > 0
            else DEFAULT_CONCURRENCY,
        )

    def backoff(self, retry: int) -> float:
        """The pause before retry number ``retry`` (0 for the first): exponential, with jitter."""
        base = min(self.max_retry_interval, self.retry_interval * _BACKOFF_MULTIPLIER**retry)
        return min(self.max_retry_interval, base * random.uniform(0.5, 1.5))


class Deliverer:
    def __init__(
        self,
        subscription: Subscription,
        policy: DeliveryPolicy,
        channel: EventSink,
        dead_letter: DeadLetter,
        stopping: asyncio.Event,
        metrics: Metrics | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.subscription = subscription
        self.policy = policy
        self._channel = channel
        self._dead_letter = dead_letter
        self._stopping = stopping
        self._metrics = metrics
        self._tracer = tracer or Tracer()
        self._span_name = f"pubsub/{subscription.topic}"
        # Handler tasks now calling the app, and those waiting (backoff, app port closed).
        self._calling: set[asyncio.Task[Any]] = set()
        self._waiting: set[asyncio.Task[Any]] = set()
        self._where = f"{subscription.pubsubname}/{subscription.topic}"
        self._labels = (subscription.pubsubname, subscription.topic)

    async def __call__(self, message: Message) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._calling.add(task)
        try:
            await self._handle(message)
        finally:
            self._calling.discard(task)
            self._waiting.discard(task)

    @property
    def in_flight(self) -> int:
        """Messages being delivered now, or waiting for their next try."""
        return len(self._calling) + len(self._waiting)

    def cancel_all(self) -> None:
        """Past the drain timeout: interrupt calls still running (their messages stay with the broker)."""
        for task in self._calling | self._waiting:
            task.cancel()

    async def _handle(self, message: Message) -> None:
        subscription = self.subscription
        metadata = {**message.metadata, "pubsubName": subscription.pubsubname}
        if subscription.raw_payload:
            event = cloudevents.from_raw_payload(
                message.data, topic=message.topic, pubsub=subscription.pubsubname, metadata=metadata
            )
            body = gojson.encode(event)
        else:
            body = message.data
            try:
                decoded = gojson.decode_plain(body)
            except ValueError:
                decoded = None
            if not isinstance(decoded, dict):
                await self._give_up(message, "the message is not a CloudEvent (not a JSON object)", 0)
                return
            event = decoded
            for name in ("traceid", "traceparent", "tracestate"):
                if name not in event and name in metadata:
                    event[name] = metadata[name]
        event_id = event.get("id")
        if cloudevents.has_expired(event):
            log.warning("dropping expired pub/sub event %s as of %s", event_id, event.get("expiration"))
            if subscription.dead_letter_topic:
                with contextlib.suppress(Exception):
                    await self._dead_letter(subscription.dead_letter_topic, message, "the event expired")
            return
        try:
            path = subscription.route(event)
        except RoutingError as exc:
            await self._give_up(message, f"routing event {event_id} failed: {exc}", 0)
            return
        if path is None:
            log.debug("no matching route for event %s on %s; skipping", event_id, self._where)
            if subscription.dead_letter_topic:
                with contextlib.suppress(Exception):
                    await self._dead_letter(
                        subscription.dead_letter_topic, message, "no route matched the event"
                    )
            return
        await self._deliver(message, event, body, path, metadata)

    async def _deliver(
        self, message: Message, event: dict[str, Any], body: bytes, path: str, metadata: dict[str, str]
    ) -> None:
        # The delivery is a span of its own, a child of the publish's span carried in the event.
        parent = event.get("traceparent") or event.get("traceid")
        state = event.get("tracestate")
        tracer = self._tracer
        attributes = None
        if tracer.exporting:
            attributes = {
                "messaging.system": "pubsub",
                "messaging.destination.name": self.subscription.topic,
                "messaging.message.id": str(event.get("id", "")),
                "url.path": path,
            }
        span = tracer.start(
            self._span_name,
            parent if isinstance(parent, str) else None,
            state if isinstance(state, str) else "",
            "consumer",
            attributes,
        )
        status, error = 0, ""
        try:
            status, error = await self._attempts(message, event, body, path, _headers(metadata, span))
        finally:
            span.finish(status, error)

    async def _attempts(
        self, message: Message, event: dict[str, Any], body: bytes, path: str, headers: dict[str, bytes]
    ) -> tuple[int, str]:
        """Try until settled; the last HTTP status and, when the app did not accept it, why not."""
        subscription = self.subscription
        envelope = Envelope(subscription.pubsubname, message.topic, path, event, body, headers)
        attempts = 0
        while True:
            if self._stopping.is_set():
                _stop()
            status = 0
            sent = time.perf_counter()
            try:
                answer = await self._channel.deliver(envelope, self.policy.timeout)
            except AppUnreachable:
                await self._wait(self._channel.wait_reachable())
                continue
            except Exception as exc:  # a timeout or broken connection counts as a failed try
                outcome, reason = Outcome.RETRY, f"calling the app failed: {exc!r}"
            else:
                status, outcome, reason = answer.status, answer.outcome, answer.reason
            metrics = self._metrics
            if metrics is not None:
                metrics.delivery_latency(*self._labels, time.perf_counter() - sent)
            if outcome is Outcome.SUCCESS:
                if metrics is not None:
                    metrics.delivered(*self._labels)
                return status, ""
            event_id = event.get("id")
            if outcome is Outcome.DROP:
                level = logging.ERROR if status == 404 else logging.WARNING
                where_to = self.subscription.dead_letter_topic
                fate = f"sent to dead-letter topic {where_to}" if where_to else "dropped"
                log.log(level, "event %s on %s to %s %s: %s", event_id, self._where, path, fate, reason)
                if self.subscription.dead_letter_topic:
                    await self._send_to_dead_letter(message, event_id, reason)
                elif metrics is not None:
                    metrics.dropped(*self._labels)
                return status, reason
            attempts += 1
            limit = self.policy.max_attempts
            if 0 <= limit <= attempts:
                await self._give_up(message, f"event {event_id} to {path}: {reason}", attempts)
                return status, reason
            if metrics is not None:
                metrics.retried(*self._labels)
            delay = self.policy.backoff(attempts - 1)
            log.warning(
                "delivering event %s on %s to %s failed (try %d%s): %s; retrying in %.2fs",
                event_id,
                self._where,
                path,
                attempts,
                f" of {limit}" if limit >= 0 else "",
                reason,
                delay,
            )
            await self._wait(asyncio.sleep(delay))

    async def _wait(self, pause: Awaitable[None]) -> None:
        """Wait for ``pause`` unless the sidecar starts stopping first."""
        task = asyncio.current_task()
        assert task is not None
        self._calling.discard(task)
        self._waiting.add(task)
        waiter = asyncio.ensure_future(pause)
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait((waiter, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in (waiter, stopping):
                future.cancel()
            self._waiting.discard(task)
            self._calling.add(task)
        if self._stopping.is_set():
            _stop()

    async def _give_up(self, message: Message, reason: str, attempts: int) -> None:
        tries = f" after {attempts} tries" if attempts else ""
        topic = self.subscription.dead_letter_topic
        if topic:
            log.warning("%s: %s%s; sending it to dead-letter topic %s", self._where, reason, tries, topic)
            await self._send_to_dead_letter(message, None, reason + tries)
        else:
            log.warning(
                "%s: %s%s; dropping it (the subscription has no deadLetterTopic)", self._where, reason, tries
            )
            if self._metrics is not None:
                self._metrics.dropped(*self._labels)

    async def _send_to_dead_letter(self, message: Message, event_id: Any, reason: str) -> None:
        topic = self.subscription.dead_letter_topic
        try:
            await self._dead_letter(topic, message, reason)
        except Exception as exc:
            if self._metrics is not None:
                self._metrics.component_error(self.subscription.pubsubname, "publish")
            # Raising keeps the message with the broker: it comes back rather than being lost.
            log.error(
                "sending event %s on %s to dead-letter topic %s failed: %s", event_id, self._where, topic, exc
            )
            raise
        if self._metrics is not None:
            self._metrics.dead_lettered(*self._labels)


def _stop() -> None:
    # The broker treats a cancelled handler as "not handled": the message is handed out again.
    raise asyncio.CancelledError("the sidecar is stopping")


def _headers(metadata: dict[str, str], span: Span) -> dict[str, bytes]:
    headers = {"content-type": cloudevents.CLOUDEVENTS_JSON.encode()}
    for name, value in metadata.items():
        if name.lower() in _OWN_HEADERS or not _HEADER_NAME.match(name) or any(c in value for c in "\r\n\0"):
            continue
        headers[name] = value.encode("utf-8")
    # Always a traceparent: a message that came without one starts a trace (dapr/dapr#9990).
    headers["traceparent"] = span.traceparent.encode()
    if span.tracestate:
        headers["tracestate"] = span.tracestate.encode("utf-8")
    return headers

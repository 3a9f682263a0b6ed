"""``SubscribeTopicEventsAlpha1``: a subscriber on a bidirectional stream, without any app port.

The client sends one initial request (pubsub, topic, metadata, dead-letter topic); the sidecar
answers with an initial response, then sends each event and waits for the ack whose id is the
event's id (acks may come in any order). The pub/sub block runs the subscription exactly as an
app's: SUCCESS acks, RETRY retries with backoff up to ``deliveryMaxAttempts``, then the dead-letter
topic; DROP goes to the dead-letter topic at once. When the stream ends, events waiting for an ack
stay with the broker and are delivered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from runtime.delivery.event_sink import Answer, AppCallFailed, AppUnreachable, Envelope, Outcome
from runtime.delivery.subscriptions import SubscriptionError
from runtime.grpc.errors import GrpcError
from runtime.grpc.events import topic_event
from runtime.grpc.protos import appcallback_pb2, pubsub_pb2

if TYPE_CHECKING:
    from runtime.grpc.api import Call
    from runtime.lifecycle.sidecar import Sidecar

log = logging.getLogger("pillion.grpc")
# How long a new stream may take to send its initial request.
INITIAL_REQUEST_TIMEOUT = 30.0
_STATUSES = {
    appcallback_pb2.TopicEventResponse.SUCCESS: Outcome.SUCCESS,
    appcallback_pb2.TopicEventResponse.RETRY: Outcome.RETRY,
    appcallback_pb2.TopicEventResponse.DROP: Outcome.DROP,
}
_CLOSE = object()


class StreamSink:
    """The receiving end of one stream, as the delivery loop sees it."""

    def __init__(self) -> None:
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._waiting: dict[str, list[asyncio.Future[int]]] = {}
        self.closed = False

    async def deliver(self, envelope: Envelope, time_limit: float | None) -> Answer:
        if self.closed:
            raise AppUnreachable("the stream has ended")
        event_id = str(envelope.event.get("id", ""))
        ack: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(event_id, []).append(ack)
        message = topic_event(envelope.event, envelope.pubsub, envelope.topic, "/")
        self.outbox.put_nowait(pubsub_pb2.SubscribeTopicEventsResponseAlpha1(event_message=message))
        try:
            status = await asyncio.wait_for(ack, time_limit)
        except TimeoutError:
            raise AppCallFailed(f"no ack for event {event_id} within {time_limit:g}s") from None
        finally:
            waiting = self._waiting.get(event_id)
            if waiting is not None and ack in waiting:
                waiting.remove(ack)
                if not waiting:
                    del self._waiting[event_id]
        outcome = _STATUSES.get(status, Outcome.RETRY)  # type: ignore[call-overload]
        if outcome is Outcome.SUCCESS:
            return Answer(outcome, 200)
        if status not in _STATUSES:
            return Answer(outcome, 200, f"the subscriber answered an unknown status {status}")
        return Answer(outcome, 200, f"the subscriber answered {outcome.value}")

    async def wait_reachable(self) -> None:
        # A stream that ended never comes back; the subscription is being stopped.
        await asyncio.Event().wait()

    def acked(self, processed: pubsub_pb2.SubscribeTopicEventsRequestProcessedAlpha1) -> None:
        waiting = self._waiting.get(processed.id)
        if not waiting:
            log.warning("ack for unknown event %r on a streaming subscription; ignored", processed.id)
            return
        ack = waiting.pop(0)
        if not waiting:
            del self._waiting[processed.id]
        if not ack.done():
            ack.set_result(processed.status.status)

    def close(self) -> None:
        """The stream ended: events waiting for an ack go back to the broker."""
        self.closed = True
        for waiting in self._waiting.values():
            for ack in waiting:
                if not ack.done():
                    ack.set_exception(AppUnreachable("the stream has ended"))
        self._waiting.clear()
        self.outbox.put_nowait(_CLOSE)


class StreamingSubscriptions:
    def __init__(self, sidecar: Sidecar) -> None:
        self._sidecar = sidecar
        self._sinks: set[StreamSink] = set()

    def close_all(self) -> None:
        for sink in list(self._sinks):
            sink.close()

    async def serve(self, requests: AsyncIterator[Any], call: Call) -> AsyncIterator[Any]:
        initial = await self._initial(requests)
        block = self._sidecar.pubsub
        sink = StreamSink()
        dead_letter = initial.dead_letter_topic if initial.HasField("dead_letter_topic") else ""
        try:
            stream = await block.subscribe_stream(
                initial.pubsub_name, initial.topic, dict(initial.metadata), dead_letter, sink
            )
        except SubscriptionError as exc:
            raise GrpcError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        self._sinks.add(sink)
        reader = asyncio.create_task(self._read_acks(requests, sink))
        try:
            yield pubsub_pb2.SubscribeTopicEventsResponseAlpha1(
                initial_response=pubsub_pb2.SubscribeTopicEventsResponseInitialAlpha1()
            )
            while True:
                message = await sink.outbox.get()
                if message is _CLOSE:
                    break
                yield message
            problem = reader.exception() if reader.done() and not reader.cancelled() else None
            if isinstance(problem, GrpcError):
                raise problem
        finally:
            self._sinks.discard(sink)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            # Stop first: waiting deliveries then see the stream gone and leave their events queued.
            stopping = asyncio.ensure_future(
                block.unsubscribe_stream(stream, self._sidecar.options.drain_timeout)
            )
            sink.close()
            await stopping

    @staticmethod
    async def _initial(requests: AsyncIterator[Any]) -> pubsub_pb2.SubscribeTopicEventsRequestInitialAlpha1:
        try:
            first = await asyncio.wait_for(anext(requests), INITIAL_REQUEST_TIMEOUT)
        except StopAsyncIteration:
            raise GrpcError(grpc.StatusCode.UNKNOWN, "initial request is required") from None
        except TimeoutError:
            raise GrpcError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no initial request within {INITIAL_REQUEST_TIMEOUT:g}s",
            ) from None
        if not first.HasField("initial_request"):
            raise GrpcError(grpc.StatusCode.UNKNOWN, "initial request is required")
        initial: pubsub_pb2.SubscribeTopicEventsRequestInitialAlpha1 = first.initial_request
        if not initial.pubsub_name:
            raise GrpcError(grpc.StatusCode.UNKNOWN, "pubsubName is required")
        if not initial.topic:
            raise GrpcError(grpc.StatusCode.UNKNOWN, "topic is required")
        return initial

    @staticmethod
    async def _read_acks(requests: AsyncIterator[Any], sink: StreamSink) -> None:
        try:
            async for request in requests:
                if request.HasField("event_processed"):
                    sink.acked(request.event_processed)
                elif request.HasField("initial_request"):
                    raise GrpcError(grpc.StatusCode.UNKNOWN, "duplicate initial request received")
        finally:
            # The client closed its side (or broke the rule): the stream ends.
            sink.close()

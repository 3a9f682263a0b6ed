"""The channel to a gRPC app (``--app-protocol grpc``): the app's ``AppCallback`` service.

* ``ListTopicSubscriptions`` once at start (3 tries with backoff; UNIMPLEMENTED means none);
* ``OnTopicEvent`` per event: SUCCESS/RETRY/DROP as for HTTP apps, an unknown status is RETRY,
  UNIMPLEMENTED acks the event without a dead letter, any other error is a failed try;
* ``AppCallbackHealthCheck/HealthCheck`` as the health probe (any error fails it).

While the app's port refuses connections nothing is sent and no try is used up, as for HTTP apps.
"""

from __future__ import annotations

import asyncio
import logging
import os

import grpc
from google.protobuf import empty_pb2

from runtime.delivery.app_health import AppHealth, HealthCheck
from runtime.delivery.event_sink import (
    Answer,
    AppCallFailed,
    AppUnreachable,
    Envelope,
    Outcome,
    wait_for_port,
)
from runtime.delivery.subscriptions import Subscription, from_grpc_app
from runtime.grpc.errors import HTTP_STATUS
from runtime.grpc.events import call_metadata, topic_event
from runtime.grpc.protos import appcallback_pb2, appcallback_pb2_grpc

log = logging.getLogger("pillion.app")
_DISCOVERY_TRIES = 3
_STATUSES = {
    appcallback_pb2.TopicEventResponse.SUCCESS: Outcome.SUCCESS,
    appcallback_pb2.TopicEventResponse.RETRY: Outcome.RETRY,
    appcallback_pb2.TopicEventResponse.DROP: Outcome.DROP,
}


class GrpcAppChannel:
    def __init__(
        self,
        address: str,
        port: int,
        app_id: str,
        health_check: HealthCheck | None = None,
        max_message_size: int = 4 * 1024 * 1024,
    ) -> None:
        self.address, self.port, self.app_id = address, port, app_id
        host = f"[{address}]" if ":" in address else address
        self._target = f"{host}:{port}"
        self._max = max_message_size
        token = os.environ.get("APP_API_TOKEN", "")
        self._token: list[tuple[str, str]] = [("dapr-api-token", token)] if token else []
        self._channel: grpc.aio.Channel | None = None
        self._probe: asyncio.Task[None] | None = None
        self.health = AppHealth(health_check, self.check_health) if health_check is not None else None

    def _stubs(
        self,
    ) -> tuple[appcallback_pb2_grpc.AppCallbackStub, appcallback_pb2_grpc.AppCallbackHealthCheckStub]:
        channel = self._grpc
        # The generated stub classes carry no annotations.
        return (
            appcallback_pb2_grpc.AppCallbackStub(channel),  # type: ignore[no-untyped-call]
            appcallback_pb2_grpc.AppCallbackHealthCheckStub(channel),  # type: ignore[no-untyped-call]
        )

    @property
    def _grpc(self) -> grpc.aio.Channel:
        if self._channel is None:  # made lazily: a channel belongs to the running loop
            self._channel = grpc.aio.insecure_channel(
                self._target,
                options=[
                    ("grpc.max_receive_message_length", self._max),
                    ("grpc.max_send_message_length", self._max),
                ],
            )
        return self._channel

    async def programmatic_subscriptions(self) -> list[Subscription]:
        stub = self._stubs()[0]
        for attempt in range(_DISCOVERY_TRIES):
            try:
                reply = await stub.ListTopicSubscriptions(empty_pb2.Empty(), timeout=10, metadata=self._token)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    log.info("the app does not implement ListTopicSubscriptions: no subscriptions")
                    return []
                if attempt == _DISCOVERY_TRIES - 1:
                    raise AppCallFailed(
                        f"ListTopicSubscriptions failed: {exc.code().name} {exc.details()}"
                    ) from None
                await asyncio.sleep(0.5 * 2**attempt)
        return from_grpc_app(
            (
                s.pubsub_name,
                s.topic,
                dict(s.metadata),
                [(rule.match, rule.path) for rule in s.routes.rules],
                s.routes.default,
                s.dead_letter_topic,
                s.bulk_subscribe.enabled,
            )
            for s in reply.subscriptions
        )

    async def deliver(self, envelope: Envelope, time_limit: float | None) -> Answer:
        if self.health is not None and not self.health.healthy:
            raise AppUnreachable("the app is unhealthy")
        request = topic_event(envelope.event, envelope.pubsub, envelope.topic, envelope.path)
        stub = self._stubs()[0]
        metadata = call_metadata(envelope.headers) + self._token
        try:
            reply = await stub.OnTopicEvent(request, timeout=time_limit, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNAVAILABLE and not await self._port_open():
                raise AppUnreachable(exc.details() or "connection refused") from None
            status = HTTP_STATUS.get(code, 500)
            if code == grpc.StatusCode.UNIMPLEMENTED:
                # daprd acks such an event and does not dead-letter it.
                log.warning(
                    "the app does not implement OnTopicEvent: event %s on %s/%s dropped",
                    request.id,
                    envelope.pubsub,
                    envelope.topic,
                )
                return Answer(Outcome.SUCCESS, status)
            return Answer(Outcome.RETRY, status, f"the app answered {code.name}: {exc.details()}")
        outcome = _STATUSES.get(reply.status)
        if outcome is None:
            return Answer(Outcome.RETRY, 200, f"the app answered an unknown status {reply.status}")
        if outcome is Outcome.SUCCESS:
            return Answer(outcome, 200)
        return Answer(outcome, 200, f"the app answered {outcome.value}")

    async def _port_open(self) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(self.address, self.port), 1)
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True

    async def wait_reachable(self) -> None:
        health = self.health
        if health is None or health.healthy:
            if self._probe is None or self._probe.done():
                self._probe = asyncio.create_task(wait_for_port(self.address, self.port))
            await asyncio.shield(self._probe)
        if health is not None:
            await health.wait_healthy()

    async def check_health(self, path: str, time_limit: float) -> str | None:
        """One probe: ``HealthCheck`` answering OK within ``time_limit`` (UNIMPLEMENTED fails it)."""
        stub = self._stubs()[1]
        try:
            await stub.HealthCheck(empty_pb2.Empty(), timeout=time_limit, metadata=self._token)
        except grpc.aio.AioRpcError as exc:
            return f"HealthCheck failed: {exc.code().name} {exc.details() or ''}".rstrip()
        return None

    async def aclose(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

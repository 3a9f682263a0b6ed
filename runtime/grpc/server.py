"""The gRPC API server: ``dapr.proto.runtime.v1.Dapr`` on ``--dapr-grpc-port``, on the sidecar's loop.

Every call passes the same gates as an HTTP request, in daprd's order: the Configuration's
``spec.api`` lists (``protocol: grpc``; decided once at start-up), the API token in the
``dapr-api-token`` metadata (constant-time compare), a span continuing the caller's
``traceparent`` (grpcio's core consumes ``grpc-trace-bin`` before any handler sees it), and the
request metrics. Methods Pillion does not serve
answer ``UNIMPLEMENTED`` naming the method. The handler table is built once; a call costs one
dict lookup.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import empty_pb2

from runtime.errors import APIError
from runtime.grpc.api import Call, DaprAPI
from runtime.grpc.blocks_api import BlocksAPI
from runtime.grpc.errors import (
    HTTP_STATUS,
    GrpcError,
    from_api_error,
    not_allowed,
    unauthenticated,
    unimplemented,
)
from runtime.grpc.invoke_api import InvokeAPI
from runtime.grpc.protos import (
    binding_pb2,
    configuration_pb2,
    invoke_pb2,
    lock_pb2,
    metadata_pb2,
    pubsub_pb2,
    secret_pb2,
    state_pb2,
)
from runtime.grpc.streaming import StreamingSubscriptions

if TYPE_CHECKING:
    from runtime.lifecycle.sidecar import Sidecar

log = logging.getLogger("pillion.grpc")
SERVICE = "dapr.proto.runtime.v1.Dapr"
DEFAULT_PORT = 50001
_PREFIX = f"/{SERVICE}/"

# method -> (request class, spec.api rule "name.version", metrics block)
_SERVED: dict[str, tuple[Any, str, str]] = {
    "GetState": (state_pb2.GetStateRequest, "state.v1", "state"),
    "GetBulkState": (state_pb2.GetBulkStateRequest, "state.v1", "state"),
    "SaveState": (state_pb2.SaveStateRequest, "state.v1", "state"),
    "DeleteState": (state_pb2.DeleteStateRequest, "state.v1", "state"),
    "DeleteBulkState": (state_pb2.DeleteBulkStateRequest, "state.v1", "state"),
    "ExecuteStateTransaction": (state_pb2.ExecuteStateTransactionRequest, "state.v1", "state"),
    "QueryStateAlpha1": (state_pb2.QueryStateRequest, "state.v1alpha1", "state"),
    "PublishEvent": (pubsub_pb2.PublishEventRequest, "publish.v1", "publish"),
    "BulkPublishEvent": (pubsub_pb2.BulkPublishRequest, "publish.v1", "publish"),
    "BulkPublishEventAlpha1": (pubsub_pb2.BulkPublishRequest, "publish.v1alpha1", "publish"),
    "GetSecret": (secret_pb2.GetSecretRequest, "secrets.v1", "secrets"),
    "GetBulkSecret": (secret_pb2.GetBulkSecretRequest, "secrets.v1", "secrets"),
    "GetMetadata": (metadata_pb2.GetMetadataRequest, "metadata.v1", "metadata"),
    "SetMetadata": (metadata_pb2.SetMetadataRequest, "metadata.v1", "metadata"),
    "InvokeBinding": (binding_pb2.InvokeBindingRequest, "bindings.v1", "bindings"),
    "TryLockAlpha1": (lock_pb2.TryLockRequest, "lock.v1alpha1", "lock"),
    "UnlockAlpha1": (lock_pb2.UnlockRequest, "lock.v1alpha1", "lock"),
    "GetConfiguration": (configuration_pb2.GetConfigurationRequest, "configuration.v1", "configuration"),
    "GetConfigurationAlpha1": (
        configuration_pb2.GetConfigurationRequest,
        "configuration.v1alpha1",
        "configuration",
    ),
    "InvokeService": (invoke_pb2.InvokeServiceRequest, "invoke.v1", "invoke"),
    # ShutdownRequest has no fields: Empty reads it.
    "Shutdown": (empty_pb2.Empty, "shutdown.v1", "other"),
}
_STREAMING_RULE = "subscribe.v1alpha1"
Behaviour = Callable[[Any, Call], Awaitable[Any]]


class GrpcServer:
    def __init__(self, sidecar: Sidecar, port: int) -> None:
        self._sidecar = sidecar
        options = sidecar.options
        self._token = options.api_token.encode() if options.api_token else None
        self._api = DaprAPI(sidecar)
        self._blocks_api = BlocksAPI(sidecar)
        self._invoke_api = InvokeAPI(sidecar)
        self.streams = StreamingSubscriptions(sidecar)
        self._server: grpc.aio.Server | None = None
        self.port = port

    # --- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen and serve; ``OSError`` when the port cannot be had."""
        options = self._sidecar.options
        limit = options.max_body_size
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # Two sidecars must not share a port silently (grpc enables SO_REUSEPORT by default).
                ("grpc.so_reuseport", 0),
                ("grpc.keepalive_time_ms", 10_000),
                ("grpc.keepalive_timeout_ms", 5_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 8_000),
            ]
        )
        server.add_generic_rpc_handlers((_DaprService(self._handlers()),))
        host = f"[{options.host}]" if ":" in options.host else options.host
        try:
            bound = server.add_insecure_port(f"{host}:{self.port}")
        except RuntimeError as exc:
            raise OSError(str(exc)) from None
        if not bound:
            raise OSError("the port is in use or the address is not available")
        self.port = bound
        await server.start()
        self._server = server

    async def stop(self, grace: float) -> None:
        """Refuse new calls, end streaming subscriptions, and give calls in flight ``grace`` seconds."""
        if self._server is None:
            return
        server, self._server = self._server, None
        self.streams.close_all()
        await server.stop(grace)

    # --- the handler table ---------------------------------------------------------------------

    def _handlers(self) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        api = self._api
        behaviours: dict[str, Behaviour] = {
            "GetState": api.get_state,
            "GetBulkState": api.get_bulk_state,
            "SaveState": api.save_state,
            "DeleteState": api.delete_state,
            "DeleteBulkState": api.delete_bulk_state,
            "ExecuteStateTransaction": api.execute_state_transaction,
            "QueryStateAlpha1": api.query_state,
            "PublishEvent": api.publish_event,
            "BulkPublishEvent": api.bulk_publish,
            "BulkPublishEventAlpha1": api.bulk_publish,
            "GetSecret": api.get_secret,
            "GetBulkSecret": api.get_bulk_secret,
            "GetMetadata": api.get_metadata,
            "SetMetadata": api.set_metadata,
            "Shutdown": api.shutdown,
            "InvokeBinding": self._blocks_api.invoke_binding,
            "TryLockAlpha1": self._blocks_api.try_lock,
            "UnlockAlpha1": self._blocks_api.unlock,
            "GetConfiguration": self._blocks_api.get_configuration,
            "GetConfigurationAlpha1": self._blocks_api.get_configuration,
            "InvokeService": self._invoke_api.invoke_service,
        }
        config = self._sidecar.configuration
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        for name, (request_type, rule, block) in _SERVED.items():
            if not config.grpc_api_enabled(rule):
                handlers[name] = _refusing(not_allowed())
                continue
            handlers[name] = grpc.unary_unary_rpc_method_handler(
                self._guarded(name, block, behaviours[name]),
                request_deserializer=request_type.FromString,
                response_serializer=_serialize,
            )
        name = "SubscribeTopicEventsAlpha1"
        if not config.grpc_api_enabled(_STREAMING_RULE):
            handlers[name] = _refusing(not_allowed())
        else:
            handlers[name] = grpc.stream_stream_rpc_method_handler(
                self._guarded_stream(name),
                request_deserializer=pubsub_pb2.SubscribeTopicEventsRequestAlpha1.FromString,
                response_serializer=_serialize,
            )
        return handlers

    def _check_token(self, metadata: dict[str, str]) -> None:
        if self._token is None:
            return
        given = metadata.pop("dapr-api-token", None)
        if given is None:
            raise unauthenticated("missing api token in request metadata")
        if not hmac.compare_digest(given.encode(), self._token):
            raise unauthenticated("authentication error: api token mismatch")

    def _call(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Call:
        metadata: dict[str, str] = {}
        for key, value in context.invocation_metadata() or ():
            if isinstance(value, str):
                metadata.setdefault(key, value)
        self._check_token(metadata)
        tracer = self._sidecar.tracer
        parent = metadata.get("traceparent")
        state = metadata.get("tracestate", "")
        if tracer.exporting:
            span = tracer.start(f"{SERVICE}/{method}", parent, state, "server", {"rpc.method": method})
        else:
            span = tracer.start("", parent, state, "server")
        return Call(metadata, span)

    def _guarded(self, method: str, block: str, behaviour: Behaviour) -> Callable[..., Awaitable[Any]]:
        metrics = self._sidecar.metrics if self._sidecar.options.enable_metrics else None

        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            start = perf_counter()
            code = grpc.StatusCode.OK
            call: Call | None = None
            try:
                call = self._call(method, context)
                answer = await behaviour(request, call)
                if call.answer_metadata:
                    await context.send_initial_metadata(call.answer_metadata)
                return answer
            except Exception as exc:
                error = _as_grpc_error(exc, method)
                if error is None:
                    raise  # grpc's own abort, or the call was cancelled
                code = error.code
                if call is not None and call.answer_metadata:
                    await context.send_initial_metadata(call.answer_metadata)
                await context.abort(error.code, error.message, error.trailing_metadata())
            finally:
                if call is not None:
                    call.span.finish(HTTP_STATUS.get(code, 500))
                if metrics is not None:
                    metrics.observe_request(block, method, HTTP_STATUS.get(code, 500), perf_counter() - start)

        return handle

    def _guarded_stream(self, method: str) -> Callable[..., AsyncIterator[Any]]:
        streams = self.streams

        async def handle(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            try:
                call = self._call(method, context)
                async for response in streams.serve(requests, call):
                    yield response
            except Exception as exc:
                error = _as_grpc_error(exc, method)
                if error is None:
                    raise
                await context.abort(error.code, error.message, error.trailing_metadata())

        return handle


class _DaprService(grpc.GenericRpcHandler):
    """The served methods; any other method of the service is UNIMPLEMENTED, named in the message.

    (Generic handlers only: grpc.aio's accept loop keeps one pending request per *registered*
    method, so registering the service's 94 methods made every call ~100 µs of CPU dearer.)
    """

    def __init__(self, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]) -> None:
        self._handlers = handlers

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = handler_call_details.method
        if not method.startswith(_PREFIX):
            return None
        name = method[len(_PREFIX) :]
        found = self._handlers.get(name)
        # Not kept: a client must not grow the table by calling made-up names.
        return found if found is not None else _refusing(unimplemented(f"{SERVICE}/{name}"))


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


def _as_grpc_error(exc: Exception, method: str) -> GrpcError | None:
    if isinstance(exc, GrpcError):
        return exc
    if isinstance(exc, APIError):
        return from_api_error(exc)
    if isinstance(exc, grpc.aio.AbortError):
        return None
    log.error("unexpected error in %s", method, exc_info=exc)
    return GrpcError(grpc.StatusCode.INTERNAL, "internal error; see the sidecar log")


def _refusing(error: GrpcError) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler that ends any call, whatever its shape, with ``error`` without reading it."""

    async def refuse(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(error.code, error.message, error.trailing_metadata())

    return grpc.stream_stream_rpc_method_handler(refuse)

"""``InvokeService`` over gRPC: the call of an ``InvokeRequest`` on another app (or this one) through
the same invocation block as ``/v1.0/invoke`` (docs/grpc.md).

As daprd with an HTTP callee: the verb is the ``http_extension``'s as named (``NONE`` when unset,
sent as it is), the query string its ``querystring``, the body ``data.value``; the caller's gRPC
metadata goes along as headers. The answer carries ``dapr-http-status``; a status outside 200-299
becomes a gRPC error whose code follows daprd's HTTP-to-gRPC table, whose message is the reason
phrase, and whose ErrorInfo holds ``http.code`` and the start of the body.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2

from runtime.errors import DOMAIN, direct_invoke_failed
from runtime.grpc.errors import GrpcError
from runtime.grpc.protos import common_pb2, invoke_pb2
from runtime.invocation.calls import Call as InvokeCall
from runtime.invocation.calls import forwarded_request_headers, header, normalize_method

if TYPE_CHECKING:
    from runtime.grpc.api import Call
    from runtime.lifecycle.sidecar import Sidecar

# daprd's table (pkg/messaging/v1/util.go); every other status is UNKNOWN.
_CODES = {
    400: grpc.StatusCode.INTERNAL,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.CANCELLED,
    409: grpc.StatusCode.ALREADY_EXISTS,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# gRPC's own metadata, which says nothing about the app's request.
_TRANSPORT = frozenset({":authority", "content-type", "te", "grpc-accept-encoding", "grpc-timeout"})
# daprd keeps this much of an error answer's body in the ErrorInfo.
_ERROR_BODY = 63


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class InvokeAPI:
    def __init__(self, sidecar: Sidecar) -> None:
        self._sidecar = sidecar

    async def invoke_service(
        self, request: invoke_pb2.InvokeServiceRequest, call: Call
    ) -> common_pb2.InvokeResponse:
        service = self._sidecar.invocation
        if service is None:
            raise direct_invoke_failed(request.id, "invocation is starting")
        message = request.message
        extension = message.http_extension
        verb = common_pb2.HTTPExtension.Verb.Name(extension.verb)
        raw = [
            (key.encode("latin-1"), value.encode("latin-1"))
            for key, value in call.metadata.items()
            if key not in _TRANSPORT
        ]
        headers = forwarded_request_headers(raw, service.checks_token)
        if message.content_type:
            headers.append(("content-type", message.content_type))
        headers.append(("traceparent", call.span.traceparent))
        if call.span.tracestate:
            headers.append(("tracestate", call.span.tracestate))
        invocation = InvokeCall(
            verb, normalize_method(request.id, message.method), extension.querystring, headers
        )
        if message.data.value:
            invocation.buffered = message.data.value
        reply = await service.block.invoke(request.id, invocation)
        body = reply.content
        if body is None:
            body = b"".join([chunk async for chunk in reply.body])
            await reply.release()
        call.answer_metadata.append(("dapr-http-status", str(reply.status)))
        if not 200 <= reply.status < 300:
            phrase = _phrase(reply.status)
            info = error_details_pb2.ErrorInfo(
                reason=phrase,
                domain=DOMAIN,
                metadata={
                    "http.code": str(reply.status),
                    "http.error_message": body[:_ERROR_BODY].decode("utf-8", "replace"),
                },
            )
            raise GrpcError(_CODES.get(reply.status, grpc.StatusCode.UNKNOWN), phrase, [info])
        content_type = header(reply.headers, "content-type") or ""
        return common_pb2.InvokeResponse(data=any_pb2.Any(value=body), content_type=content_type)

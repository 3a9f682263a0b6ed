"""Errors as daprd sends them over gRPC: a status code and a ``google.rpc.Status`` trailer.

A building block's :class:`runtime.errors.APIError` already carries daprd's gRPC code and the
details a gRPC status holds (``APIError.grpc_details``: daprd's rich, basic and older kinds);
this module only renders them as protobuf, plus the transport's own errors (token, ``spec.api``,
methods not served).
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from runtime.errors import DOMAIN, APIError, BadRequest, ErrorInfo, HelpLink, ResourceInfo

StatusCode = grpc.StatusCode
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class GrpcError(Exception):
    """A status to end the call with: code, message and the ``google.rpc.Status`` details."""

    def __init__(self, code: grpc.StatusCode, message: str, details: list[Message] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or []

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        if not self.details:
            return ()
        packed = []
        for detail in self.details:
            holder = any_pb2.Any()
            holder.Pack(detail)
            packed.append(holder)
        status = status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)
        return (("grpc-status-details-bin", status.SerializeToString()),)


def _detail(item: ErrorInfo | ResourceInfo | BadRequest | HelpLink) -> Message:
    if isinstance(item, ErrorInfo):
        return error_details_pb2.ErrorInfo(
            reason=item.reason, domain=item.domain, metadata=dict(item.metadata)
        )
    if isinstance(item, ResourceInfo):
        return error_details_pb2.ResourceInfo(
            resource_type=item.resource_type,
            resource_name=item.resource_name,
            owner=item.owner,
            description=item.description,
        )
    if isinstance(item, BadRequest):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=item.field, description=item.description
        )
        return error_details_pb2.BadRequest(field_violations=[violation])
    return error_details_pb2.Help(
        links=[error_details_pb2.Help.Link(description=item.description, url=item.url)]
    )


def from_api_error(error: APIError) -> GrpcError:
    """The status daprd answers for the failure ``error`` describes."""
    return GrpcError(_BY_NUMBER[int(error.grpc)], error.message, [_detail(d) for d in error.grpc_details])


def unimplemented(method: str) -> GrpcError:
    return GrpcError(StatusCode.UNIMPLEMENTED, f"{method} is not implemented by Pillion")


def not_allowed() -> GrpcError:
    """A method switched off by the Configuration's ``spec.api`` lists."""
    info = error_details_pb2.ErrorInfo(
        reason="Not Implemented",
        domain=DOMAIN,
        metadata={"http.code": "501", "http.error_message": "requested endpoint is not available"},
    )
    return GrpcError(StatusCode.UNIMPLEMENTED, "Not Implemented", [info])


def unauthenticated(why: str) -> GrpcError:
    info = error_details_pb2.ErrorInfo(
        reason="Unauthorized", domain=DOMAIN, metadata={"http.code": "401", "http.error_message": why}
    )
    return GrpcError(StatusCode.UNAUTHENTICATED, "Unauthorized", [info])


# gRPC code -> the HTTP status the same failure has, for the request metrics and spans.
HTTP_STATUS: Mapping[grpc.StatusCode, int] = {
    StatusCode.OK: 200,
    StatusCode.CANCELLED: 499,
    StatusCode.INVALID_ARGUMENT: 400,
    StatusCode.FAILED_PRECONDITION: 400,
    StatusCode.OUT_OF_RANGE: 400,
    StatusCode.UNAUTHENTICATED: 401,
    StatusCode.PERMISSION_DENIED: 403,
    StatusCode.NOT_FOUND: 404,
    StatusCode.ABORTED: 409,
    StatusCode.ALREADY_EXISTS: 409,
    StatusCode.RESOURCE_EXHAUSTED: 429,
    StatusCode.UNIMPLEMENTED: 501,
    StatusCode.UNAVAILABLE: 503,
    StatusCode.DEADLINE_EXCEEDED: 504,
}

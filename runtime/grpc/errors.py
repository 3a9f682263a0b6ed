"""Building-block errors as daprd sends them over gRPC: a status code and ``google.rpc.Status`` details.

The blocks raise :class:`runtime.errors.APIError` with daprd's HTTP status and ``errorCode``; this
module is the one place that turns that into the gRPC code and details daprd gives for the same
failure (docs/grpc.md, "Errors"). Three shapes, as in daprd:

* rich errors keep the block's details (BadRequest/Help, ResourceInfo, ErrorInfo ``DAPR_*``);
* basic errors carry one ErrorInfo whose reason is the ``ERR_*`` code;
* legacy errors (secrets) carry no details.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from runtime.errors import DOMAIN, APIError


class Shape(Enum):
    RICH = "rich"
    BASIC = "basic"
    LEGACY = "legacy"


Code = grpc.StatusCode

# errorCode -> (gRPC code, or None to take it from the HTTP status; shape).
_BY_CODE: Mapping[str, tuple[grpc.StatusCode | None, Shape]] = {
    "ERR_STATE_STORE_NOT_CONFIGURED": (Code.FAILED_PRECONDITION, Shape.RICH),
    "ERR_STATE_STORE_NOT_FOUND": (Code.INVALID_ARGUMENT, Shape.RICH),
    "ERR_STATE_GET": (Code.INTERNAL, Shape.BASIC),
    "ERR_STATE_BULK_GET": (Code.INTERNAL, Shape.BASIC),
    # 409 (etag mismatch) -> ABORTED, 400 (invalid etag) -> INVALID_ARGUMENT, else INTERNAL.
    "ERR_STATE_SAVE": (None, Shape.BASIC),
    "ERR_STATE_DELETE": (None, Shape.BASIC),
    "ERR_STATE_BULK_DELETE": (None, Shape.BASIC),
    "ERR_STATE_TRANSACTION": (Code.INTERNAL, Shape.BASIC),
    "ERR_NOT_SUPPORTED_STATE_OPERATION": (Code.UNIMPLEMENTED, Shape.BASIC),
    "ERR_STATE_STORE_TOO_MANY_TRANSACTIONS": (Code.INVALID_ARGUMENT, Shape.RICH),
    "ERR_STATE_QUERY": (Code.INTERNAL, Shape.RICH),
    "ERR_PUBSUB_EMPTY": (Code.INVALID_ARGUMENT, Shape.RICH),
    "ERR_PUBSUB_NOT_FOUND": (Code.INVALID_ARGUMENT, Shape.RICH),
    "ERR_TOPIC_NAME_EMPTY": (Code.INVALID_ARGUMENT, Shape.RICH),
    "ERR_PUBSUB_REQUEST_METADATA": (Code.INVALID_ARGUMENT, Shape.RICH),
    "ERR_PUBSUB_CLOUD_EVENTS_SER": (Code.INVALID_ARGUMENT, Shape.RICH),
    "ERR_PUBSUB_EVENTS_SER": (Code.INVALID_ARGUMENT, Shape.RICH),
    "ERR_PUBSUB_FORBIDDEN": (Code.PERMISSION_DENIED, Shape.RICH),
    "ERR_PUBSUB_PUBLISH_MESSAGE": (Code.INTERNAL, Shape.RICH),
    "ERR_SECRET_STORES_NOT_CONFIGURED": (Code.FAILED_PRECONDITION, Shape.LEGACY),
    "ERR_SECRET_STORE_NOT_FOUND": (Code.INVALID_ARGUMENT, Shape.LEGACY),
    "ERR_PERMISSION_DENIED": (Code.PERMISSION_DENIED, Shape.LEGACY),
    "ERR_SECRET_GET": (Code.INTERNAL, Shape.LEGACY),
}
# Reasons of rich errors whose ErrorInfo metadata daprd leaves empty over gRPC (HTTP adds appID).
_NO_METADATA = frozenset({"DAPR_STATE_NOT_CONFIGURED", "DAPR_STATE_NOT_FOUND", "DAPR_PUBSUB_NOT_FOUND"})
# Reasons that change the code of an errorCode shared by several failures.
_BY_REASON: Mapping[str, grpc.StatusCode] = {
    "DAPR_STATE_TRANSACTIONS_NOT_SUPPORTED": Code.UNIMPLEMENTED,
    "DAPR_STATE_QUERYING_NOT_SUPPORTED": Code.INTERNAL,
}
# HTTP status -> gRPC code, for errors not in the table (grpc-gateway's mapping, reversed).
_BY_STATUS: Mapping[int, grpc.StatusCode] = {
    400: Code.INVALID_ARGUMENT,
    401: Code.UNAUTHENTICATED,
    403: Code.PERMISSION_DENIED,
    404: Code.NOT_FOUND,
    409: Code.ABORTED,
    413: Code.RESOURCE_EXHAUSTED,
    429: Code.RESOURCE_EXHAUSTED,
    501: Code.UNIMPLEMENTED,
    503: Code.UNAVAILABLE,
    504: Code.DEADLINE_EXCEEDED,
}
# Detail order in daprd's rich errors: BadRequest or Help, then ResourceInfo, then ErrorInfo.
_ORDER = {"BadRequest": 0, "Help": 0, "ResourceInfo": 1, "ErrorInfo": 2}


class GrpcError(Exception):
    """A status to end the call with: code, message and the ``google.rpc.Status`` trailer."""

    def __init__(self, code: grpc.StatusCode, message: str, details: list[Any] | None = None) -> None:
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


def _detail(item: Mapping[str, Any]) -> Any:
    kind = str(item.get("@type", "")).rsplit(".", 1)[-1]
    if kind == "ErrorInfo":
        return error_details_pb2.ErrorInfo(
            reason=item["reason"], domain=item.get("domain", DOMAIN), metadata=item.get("metadata") or {}
        )
    if kind == "ResourceInfo":
        return error_details_pb2.ResourceInfo(
            resource_type=item.get("resource_type", ""),
            resource_name=item.get("resource_name", ""),
            owner=item.get("owner", ""),
            description=item.get("description", ""),
        )
    if kind == "BadRequest":
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=v["field"], description=v["description"])
            for v in item.get("field_violations", [])
        ]
        return error_details_pb2.BadRequest(field_violations=violations)
    if kind == "Help":
        links = [
            error_details_pb2.Help.Link(description=k["description"], url=k["url"]) for k in item["links"]
        ]
        return error_details_pb2.Help(links=links)
    return None


def from_api_error(error: APIError) -> GrpcError:
    """The gRPC status daprd answers for the failure ``error`` describes."""
    code, shape = _BY_CODE.get(error.code, (None, Shape.RICH if error.details else Shape.BASIC))
    reasons = [
        str(d.get("reason")) for d in error.details or [] if str(d.get("@type", "")).endswith("ErrorInfo")
    ]
    for reason in reasons:
        if reason in _BY_REASON:
            code = _BY_REASON[reason]
    if code is None:
        code = _BY_STATUS.get(error.status, Code.INTERNAL)
    if shape is Shape.LEGACY:
        return GrpcError(code, error.message)
    if shape is Shape.BASIC or not error.details:
        info = error_details_pb2.ErrorInfo(reason=error.code, domain=DOMAIN)
        return GrpcError(code, error.message, [info])
    ordered = sorted(error.details, key=lambda d: _ORDER.get(str(d.get("@type", "")).rsplit(".", 1)[-1], 3))
    details = []
    for item in ordered:
        detail = _detail(item)
        if isinstance(detail, error_details_pb2.ErrorInfo) and detail.reason in _NO_METADATA:
            detail.ClearField("metadata")
        if detail is not None:
            details.append(detail)
    return GrpcError(code, error.message, details)


def unimplemented(method: str) -> GrpcError:
    return GrpcError(Code.UNIMPLEMENTED, f"{method} is not implemented by Pillion")


def not_allowed() -> GrpcError:
    """A method switched off by the Configuration's ``spec.api`` lists."""
    info = error_details_pb2.ErrorInfo(
        reason="Not Implemented",
        domain=DOMAIN,
        metadata={"http.code": "501", "http.error_message": "requested endpoint is not available"},
    )
    return GrpcError(Code.UNIMPLEMENTED, "Not Implemented", [info])


def unauthenticated(why: str) -> GrpcError:
    info = error_details_pb2.ErrorInfo(
        reason="Unauthorized", domain=DOMAIN, metadata={"http.code": "401", "http.error_message": why}
    )
    return GrpcError(Code.UNAUTHENTICATED, "Unauthorized", [info])


# gRPC code -> the HTTP status the same failure has, for the request metrics.
HTTP_STATUS: Mapping[grpc.StatusCode, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.INVALID_ARGUMENT: 400,
    Code.FAILED_PRECONDITION: 400,
    Code.OUT_OF_RANGE: 400,
    Code.UNAUTHENTICATED: 401,
    Code.PERMISSION_DENIED: 403,
    Code.NOT_FOUND: 404,
    Code.ABORTED: 409,
    Code.ALREADY_EXISTS: 409,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.UNIMPLEMENTED: 501,
    Code.UNAVAILABLE: 503,
    Code.DEADLINE_EXCEEDED: 504,
}

"""The errors a request can end with, described once for every transport.

A building block raises :class:`APIError`. It carries what daprd sends for the error on either
API: the ``errorCode`` and HTTP status of the JSON body, the gRPC status code, and the rich error
details daprd attaches (``google.rpc`` ErrorInfo, ResourceInfo, BadRequest, Help), for each API.
The transports only render it: ``runtime/http/wire.py`` as ``{"errorCode", "message",
"details"?}``, a gRPC server as a ``google.rpc.Status`` with ``grpc_details``. Nothing here
imports grpcio: :class:`GrpcCode` is the plain numbering of ``google.rpc.Code``.

Every ``errorCode`` is a member of :class:`Code`, and the functions below are the only place an
``APIError`` is built (``tests/test_errors.py`` checks both, and that each (HTTP status,
errorCode) pair is the one ``docs/openapi.yaml`` documents). Codes, statuses, gRPC codes and
ErrorInfo reasons are daprd's: ``pkg/messages/errorcodes``, ``pkg/messages/predefined.go`` and
``pkg/api/errors`` in github.com/dapr/dapr.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum, StrEnum
from typing import Literal

DOMAIN = "dapr.io"


class GrpcCode(IntEnum):
    """gRPC status codes (``google.rpc.Code``), so that blocks can name one without grpcio."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class Code(StrEnum):
    """Every ``errorCode`` Pillion answers with."""

    # common
    MALFORMED_REQUEST = "ERR_MALFORMED_REQUEST"
    BODY_READ = "ERR_BODY_READ"
    INTERNAL = "ERR_INTERNAL"
    DIRECT_INVOKE = "ERR_DIRECT_INVOKE"
    HEALTH_NOT_READY = "ERR_HEALTH_NOT_READY"
    HEALTH_APPID_NOT_MATCH = "ERR_HEALTH_APPID_NOT_MATCH"
    OUTBOUND_HEALTH_NOT_READY = "ERR_OUTBOUND_HEALTH_NOT_READY"
    # state
    STATE_STORE_NOT_FOUND = "ERR_STATE_STORE_NOT_FOUND"
    STATE_STORE_NOT_CONFIGURED = "ERR_STATE_STORE_NOT_CONFIGURED"
    STATE_STORE_NOT_SUPPORTED = "ERR_STATE_STORE_NOT_SUPPORTED"
    STATE_STORE_TOO_MANY_TRANSACTIONS = "ERR_STATE_STORE_TOO_MANY_TRANSACTIONS"
    STATE_GET = "ERR_STATE_GET"
    STATE_BULK_GET = "ERR_STATE_BULK_GET"
    STATE_SAVE = "ERR_STATE_SAVE"
    STATE_DELETE = "ERR_STATE_DELETE"
    STATE_BULK_DELETE = "ERR_STATE_BULK_DELETE"
    STATE_TRANSACTION = "ERR_STATE_TRANSACTION"
    STATE_QUERY = "ERR_STATE_QUERY"
    NOT_SUPPORTED_STATE_OPERATION = "ERR_NOT_SUPPORTED_STATE_OPERATION"
    # pub/sub
    PUBSUB_EMPTY = "ERR_PUBSUB_EMPTY"
    PUBSUB_NOT_FOUND = "ERR_PUBSUB_NOT_FOUND"
    TOPIC_NAME_EMPTY = "ERR_TOPIC_NAME_EMPTY"
    PUBSUB_FORBIDDEN = "ERR_PUBSUB_FORBIDDEN"
    PUBSUB_PUBLISH_MESSAGE = "ERR_PUBSUB_PUBLISH_MESSAGE"
    PUBSUB_REQUEST_METADATA = "ERR_PUBSUB_REQUEST_METADATA"
    PUBSUB_CLOUD_EVENTS_SER = "ERR_PUBSUB_CLOUD_EVENTS_SER"
    PUBSUB_EVENTS_SER = "ERR_PUBSUB_EVENTS_SER"
    # secrets
    SECRET_STORES_NOT_CONFIGURED = "ERR_SECRET_STORES_NOT_CONFIGURED"
    SECRET_STORE_NOT_FOUND = "ERR_SECRET_STORE_NOT_FOUND"
    PERMISSION_DENIED = "ERR_PERMISSION_DENIED"
    SECRET_GET = "ERR_SECRET_GET"
    PUBLISH_OUTBOX = "ERR_PUBLISH_OUTBOX"
    # bindings
    INVOKE_OUTPUT_BINDING = "ERR_INVOKE_OUTPUT_BINDING"
    # distributed lock
    LOCK_STORE_NOT_CONFIGURED = "ERR_LOCK_STORE_NOT_CONFIGURED"
    LOCK_STORE_NOT_FOUND = "ERR_LOCK_STORE_NOT_FOUND"
    LOCK_TRY = "ERR_TRY_LOCK"
    LOCK_UNLOCK = "ERR_UNLOCK"
    # configuration API
    CONFIGURATION_STORE_NOT_CONFIGURED = "ERR_CONFIGURATION_STORE_NOT_CONFIGURED"
    CONFIGURATION_STORE_NOT_FOUND = "ERR_CONFIGURATION_STORE_NOT_FOUND"
    CONFIGURATION_GET = "ERR_CONFIGURATION_GET"
    CONFIGURATION_SUBSCRIBE = "ERR_CONFIGURATION_SUBSCRIBE"
    APP_CHANNEL_NIL = "ERR_APP_CHANNEL_NIL"
    # blocks Pillion lacks, answering as daprd does without the component
    CRYPTO_PROVIDERS_NOT_CONFIGURED = "ERR_CRYPTO_PROVIDERS_NOT_CONFIGURED"
    CRYPTO_PROVIDER_NOT_FOUND = "ERR_CRYPTO_PROVIDER_NOT_FOUND"
    CONVERSATION_NOT_FOUND = "ERR_CONVERSATION_NOT_FOUND"
    # Pillion's admin API: dead letters (docs/dashboard.md)
    DEADLETTERS_NOT_SUPPORTED = "ERR_DEADLETTERS_NOT_SUPPORTED"
    DEADLETTER_NOT_FOUND = "ERR_DEADLETTER_NOT_FOUND"
    DEADLETTERS = "ERR_DEADLETTERS"
    DEADLETTERS_REPLAY = "ERR_DEADLETTERS_REPLAY"


# --- error details (google.rpc.*), in the order daprd adds them ------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    reason: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    domain: str = DOMAIN
    # daprd fills the metadata in over HTTP only for some errors (the store or pubsub not found).
    metadata_over_grpc: bool = True


@dataclass(frozen=True, slots=True)
class ResourceInfo:
    resource_type: str
    resource_name: str
    description: str = ""
    owner: str = ""


@dataclass(frozen=True, slots=True)
class BadRequest:
    """One field violation (daprd never sends more than one)."""

    field: str
    description: str


@dataclass(frozen=True, slots=True)
class HelpLink:
    description: str
    url: str


Detail = ErrorInfo | ResourceInfo | BadRequest | HelpLink


class APIError(Exception):
    """An error answer: ``status`` and ``details`` for HTTP, ``grpc`` and ``grpc_details`` for
    gRPC, the rest for both.

    daprd's errors come in three kinds, which differ over gRPC: rich ones (``details`` given)
    send the same details on both APIs; basic ones (``basic``: state reads and writes) send no
    details over HTTP and an ErrorInfo whose reason is the errorCode over gRPC; the older ones
    (secrets, health, malformed requests) send no details on either.
    """

    def __init__(
        self,
        status: int,
        code: Code,
        message: str,
        details: Sequence[Detail] = (),
        *,
        grpc: GrpcCode,
        basic: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = tuple(details)
        self.grpc = grpc
        self.basic = basic

    @property
    def grpc_details(self) -> tuple[Detail, ...]:
        """The details of the ``google.rpc.Status``, in the order daprd adds them: BadRequest or
        Help, then ResourceInfo, then ErrorInfo."""
        if not self.details:
            return (ErrorInfo(self.code),) if self.basic else ()
        ordered = sorted(self.details, key=lambda d: _GRPC_ORDER[type(d)])
        return tuple(
            replace(d, metadata={}) if isinstance(d, ErrorInfo) and not d.metadata_over_grpc else d
            for d in ordered
        )

    @property
    def error_info(self) -> ErrorInfo | None:
        """The ErrorInfo the gRPC status carries, if any."""
        return next((d for d in self.grpc_details if isinstance(d, ErrorInfo)), None)

    @property
    def resource_info(self) -> ResourceInfo | None:
        for detail in self.details:
            if isinstance(detail, ResourceInfo):
                return detail
        return None


_GRPC_ORDER: dict[type, int] = {BadRequest: 0, HelpLink: 0, ResourceInfo: 1, ErrorInfo: 2}


def _error(status: int, grpc: GrpcCode, code: Code, message: str, *details: Detail) -> APIError:
    return APIError(status, code, message, details, grpc=grpc)


def _basic(status: int, grpc: GrpcCode, code: Code, message: str) -> APIError:
    """An error of daprd's ``apierrors.Basic`` kind (see :class:`APIError`)."""
    return APIError(status, code, message, grpc=grpc, basic=True)


# --- common ----------------------------------------------------------------------------------------


def malformed(message: str) -> APIError:
    return _error(400, GrpcCode.INVALID_ARGUMENT, Code.MALFORMED_REQUEST, message)


def body_too_large(limit: int) -> APIError:
    return _error(
        413,
        GrpcCode.RESOURCE_EXHAUSTED,
        Code.BODY_READ,
        f"request body is larger than the limit of {limit} bytes (--max-body-size)",
    )


def internal() -> APIError:
    """Anything unexpected: the client learns nothing more, the traceback goes to the log."""
    return _error(500, GrpcCode.INTERNAL, Code.INTERNAL, "internal error; see the sidecar log")


def direct_invoke_missing_app_id() -> APIError:
    return _error(
        404,
        GrpcCode.NOT_FOUND,
        Code.DIRECT_INVOKE,
        "failed getting app id either from the URL path or the header dapr-app-id",
    )


def direct_invoke_failed(target: str, problem: str) -> APIError:
    return _error(
        500, GrpcCode.INTERNAL, Code.DIRECT_INVOKE, f"failed to invoke, id: {target}, err: {problem}"
    )


def direct_invoke_denied(target: str, problem: str) -> APIError:
    """The target's access control refused the caller."""
    return _error(
        403, GrpcCode.PERMISSION_DENIED, Code.DIRECT_INVOKE, f"failed to invoke, id: {target}, err: {problem}"
    )


def health_app_id_mismatch(app_id: str) -> APIError:
    return _error(
        500,
        GrpcCode.INTERNAL,
        Code.HEALTH_APPID_NOT_MATCH,
        f"dapr app-id does not match: expected {app_id}",
    )


def health_not_ready(waiting: Sequence[str]) -> APIError:
    return _error(500, GrpcCode.INTERNAL, Code.HEALTH_NOT_READY, f"dapr is not ready: [{' '.join(waiting)}]")


def outbound_not_ready(unreachable: Sequence[str] = ()) -> APIError:
    message = "dapr outbound is not ready"
    if unreachable:
        message += f": unreachable {', '.join(unreachable)}"
    return _error(500, GrpcCode.INTERNAL, Code.OUTBOUND_HEALTH_NOT_READY, message)


# --- state -----------------------------------------------------------------------------------------

EtagProblem = Literal["mismatch", "invalid"] | None


def state_store_not_configured(store: str, app_id: str) -> APIError:
    return _error(
        500,
        GrpcCode.FAILED_PRECONDITION,
        Code.STATE_STORE_NOT_CONFIGURED,
        f"state store {store} is not configured",
        ErrorInfo("DAPR_STATE_NOT_CONFIGURED", {"appID": app_id}, metadata_over_grpc=False),
    )


def state_store_not_found(store: str, app_id: str) -> APIError:
    return _error(
        400,
        GrpcCode.INVALID_ARGUMENT,
        Code.STATE_STORE_NOT_FOUND,
        f"state store {store} is not found",
        ErrorInfo("DAPR_STATE_NOT_FOUND", {"appID": app_id}, metadata_over_grpc=False),
    )


def state_key_not_held(store: str, key: str, problem: str) -> APIError:
    """A key the store cannot hold (see KeyLimits): refused as daprd refuses an illegal key."""
    shown = repr(key[:64] + ("..." if len(key) > 64 else ""))
    message = f"input key {shown} {problem}"
    return _error(
        400,
        GrpcCode.INVALID_ARGUMENT,
        Code.MALFORMED_REQUEST,
        message,
        ErrorInfo("DAPR_STATE_ILLEGAL_KEY"),
        ResourceInfo("state", store),
        BadRequest(shown, message),
    )


def state_illegal_key(store: str, key: str) -> APIError:
    message = f"input key/keyPrefix '{key}' can't contain '||'"
    return _error(
        400,
        GrpcCode.INVALID_ARGUMENT,
        Code.MALFORMED_REQUEST,
        message,
        ErrorInfo("DAPR_STATE_ILLEGAL_KEY"),
        ResourceInfo("state", store),
        BadRequest(key, message),
    )


def state_get_failed(store: str, key: str, problem: object) -> APIError:
    return _basic(
        500, GrpcCode.INTERNAL, Code.STATE_GET, f"fail to get {key} from state store {store}: {problem}"
    )


def state_bulk_get_failed(store: str, problem: object) -> APIError:
    return _basic(
        500,
        GrpcCode.INTERNAL,
        Code.STATE_BULK_GET,
        f"failed getting state from state store {store}: {problem}",
    )


def _write_failed(code: Code, what: str, problem: str, etag: EtagProblem) -> APIError:
    """A save or delete that failed; an etag conflict or unreadable etag is the caller's."""
    if etag == "mismatch":
        message = f"{what}: possible etag mismatch. error from state store: {problem}"
        return _basic(409, GrpcCode.ABORTED, code, message)
    if etag == "invalid":
        return _basic(400, GrpcCode.INVALID_ARGUMENT, code, f"{what}: {problem}")
    return _basic(500, GrpcCode.INTERNAL, code, f"{what}: {problem}")


def state_save_failed(store: str, problem: str, etag: EtagProblem = None) -> APIError:
    return _write_failed(Code.STATE_SAVE, f"failed saving state in state store {store}", problem, etag)


def state_delete_failed(key: str, problem: str, etag: EtagProblem = None) -> APIError:
    return _write_failed(Code.STATE_DELETE, f"failed deleting state with key {key}", problem, etag)


def state_bulk_delete_failed(store: str, problem: str, etag: EtagProblem = None) -> APIError:
    """gRPC's DeleteBulkState (HTTP has no bulk delete)."""
    return _write_failed(
        Code.STATE_BULK_DELETE, f"failed deleting state in state store {store}", problem, etag
    )


def state_key_empty() -> APIError:
    """A gRPC state item without a key (over HTTP the body check answers first)."""
    return _basic(400, GrpcCode.INVALID_ARGUMENT, Code.STATE_SAVE, "state key cannot be empty")


def state_transaction_failed(problem: str) -> APIError:
    return _basic(
        500,
        GrpcCode.INTERNAL,
        Code.STATE_TRANSACTION,
        f"error while executing state transaction: {problem}",
    )


def state_operation_not_supported(kind: str) -> APIError:
    return _basic(
        400,
        GrpcCode.UNIMPLEMENTED,
        Code.NOT_SUPPORTED_STATE_OPERATION,
        f"operation type {kind} not supported",
    )


def state_transactions_not_supported(store: str) -> APIError:
    return _error(
        500,
        GrpcCode.UNIMPLEMENTED,
        Code.STATE_STORE_NOT_SUPPORTED,
        f"state store {store} doesn't support transactions",
        ErrorInfo("DAPR_STATE_TRANSACTIONS_NOT_SUPPORTED"),
        HelpLink(
            "Check the list of state stores and the features they support",
            "https://docs.dapr.io/reference/components-reference/supported-state-stores/",
        ),
        ResourceInfo("state", store),
    )


def state_too_many_operations(count: int, limit: int) -> APIError:
    return _error(
        400,
        GrpcCode.INVALID_ARGUMENT,
        Code.STATE_STORE_TOO_MANY_TRANSACTIONS,
        f"the transaction contains {count} operations, which is more than what the "
        f"state store supports: {limit}",
        ErrorInfo(
            "DAPR_STATE_TOO_MANY_TRANSACTIONS",
            {"currentOpsTransaction": str(count), "maxOpsPerTransaction": str(limit)},
        ),
    )


def state_query_not_supported(store: str) -> APIError:
    return _error(
        500,
        GrpcCode.INTERNAL,
        Code.STATE_STORE_NOT_SUPPORTED,
        "state store does not support querying",
        ErrorInfo("DAPR_STATE_QUERYING_NOT_SUPPORTED"),
        ResourceInfo("state", store),
    )


def state_query_failed(store: str, problem: object) -> APIError:
    return _error(
        500,
        GrpcCode.INTERNAL,
        Code.STATE_QUERY,
        f"state store {store} query failed: {problem}",
        ErrorInfo("DAPR_STATE_QUERY_FAILED"),
        ResourceInfo("state", store),
    )


# --- pub/sub ---------------------------------------------------------------------------------------
# daprd's pub/sub errors carry a ResourceInfo whose description repeats the message (except the
# not-found ones), then an ErrorInfo with the request's metadata or {topic, error} / {appID, error}.


def _pubsub_error(
    status: int,
    grpc: GrpcCode,
    code: Code,
    reason: str,
    message: str,
    pubsub: str,
    metadata: Mapping[str, str],
) -> APIError:
    resource = ResourceInfo("pubsub", pubsub, message)
    return _error(status, grpc, code, message, resource, ErrorInfo(reason, dict(metadata)))


def pubsub_name_empty(metadata: Mapping[str, str]) -> APIError:
    return _pubsub_error(
        404,
        GrpcCode.INVALID_ARGUMENT,
        Code.PUBSUB_EMPTY,
        "DAPR_PUBSUB_NAME_EMPTY",
        "pubsub name is empty",
        "",
        metadata,
    )


def pubsub_not_found(pubsub: str, metadata: Mapping[str, str]) -> APIError:
    return _error(
        404,
        GrpcCode.INVALID_ARGUMENT,
        Code.PUBSUB_NOT_FOUND,
        f"pubsub {pubsub} is not found",
        ErrorInfo("DAPR_PUBSUB_NOT_FOUND", dict(metadata), metadata_over_grpc=False),
    )


def pubsub_topic_empty(pubsub: str, metadata: Mapping[str, str]) -> APIError:
    return _pubsub_error(
        404,
        GrpcCode.INVALID_ARGUMENT,
        Code.TOPIC_NAME_EMPTY,
        "DAPR_PUBSUB_TOPIC_NAME_EMPTY",
        f"topic is empty in pubsub {pubsub}",
        pubsub,
        metadata,
    )


def pubsub_forbidden(pubsub: str, topic: str, app_id: str) -> APIError:
    message = f"topic {topic} is not allowed for app id {app_id}"
    return _pubsub_error(
        403,
        GrpcCode.PERMISSION_DENIED,
        Code.PUBSUB_FORBIDDEN,
        "DAPR_PUBSUB_FORBIDDEN",
        message,
        pubsub,
        {"topic": topic, "error": message},
    )


def pubsub_publish_failed(pubsub: str, topic: str, problem: str) -> APIError:
    return _pubsub_error(
        500,
        GrpcCode.INTERNAL,
        Code.PUBSUB_PUBLISH_MESSAGE,
        "DAPR_PUBSUB_PUBLISH_MESSAGE",
        f"error when publishing to topic {topic} in pubsub {pubsub}: {problem}",
        pubsub,
        {"topic": topic, "error": problem},
    )


def pubsub_bad_metadata(pubsub: str, metadata: Mapping[str, str], problem: str) -> APIError:
    return _pubsub_error(
        400,
        GrpcCode.INVALID_ARGUMENT,
        Code.PUBSUB_REQUEST_METADATA,
        "DAPR_PUBSUB_METADATA_DESERIALIZATION",
        f"failed deserializing metadata. Error: {problem}",
        pubsub,
        metadata,
    )


def pubsub_cloud_event_creation(pubsub: str, app_id: str, problem: str) -> APIError:
    return _pubsub_error(
        500,
        GrpcCode.INVALID_ARGUMENT,
        Code.PUBSUB_CLOUD_EVENTS_SER,
        "DAPR_PUBSUB_CLOUD_EVENT_CREATION",
        "cannot create cloudevent",
        pubsub,
        {"appID": app_id, "error": problem},
    )


def pubsub_events_unreadable(pubsub: str, topic: str, app_id: str, problem: str) -> APIError:
    """A bulk publish request whose entries cannot be read."""
    return _pubsub_error(
        400,
        GrpcCode.INVALID_ARGUMENT,
        Code.PUBSUB_EVENTS_SER,
        "DAPR_PUBSUB_UNMARSHAL_EVENTS",
        f"error when unmarshaling the request for topic {topic} pubsub {pubsub}: {problem}",
        pubsub,
        {"appID": app_id},
    )


def pubsub_envelope_failed(pubsub: str, topic: str, app_id: str, problem: str) -> APIError:
    """A bulk entry whose event does not match its contentType."""
    return _pubsub_error(
        400,
        GrpcCode.INVALID_ARGUMENT,
        Code.PUBSUB_EVENTS_SER,
        "DAPR_PUBSUB_MARSHAL_ENVELOPE",
        f"error when marshalling cloud event envelope for topic {topic} pubsub {pubsub}: {problem}",
        pubsub,
        {"appID": app_id, "error": problem},
    )


def pubsub_events_failed(pubsub: str, topic: str, app_id: str, problem: str) -> APIError:
    """Bulk entries that cannot be told apart (entryId missing or repeated)."""
    return _pubsub_error(
        400,
        GrpcCode.INVALID_ARGUMENT,
        Code.PUBSUB_EVENTS_SER,
        "DAPR_PUBSUB_MARSHAL_EVENTS",
        f"error marshaling events to bytes for topic {topic} pubsub {pubsub}. error: {problem}",
        pubsub,
        {"appID": app_id, "error": problem},
    )


# --- secrets ---------------------------------------------------------------------------------------


def secret_stores_not_configured() -> APIError:
    return _error(
        500,
        GrpcCode.FAILED_PRECONDITION,
        Code.SECRET_STORES_NOT_CONFIGURED,
        "secret store is not configured",
    )


def secret_store_not_found(store: str) -> APIError:
    return _error(
        401,
        GrpcCode.INVALID_ARGUMENT,
        Code.SECRET_STORE_NOT_FOUND,
        f"failed finding secret store with key {store}",
    )


def secret_permission_denied(store: str, name: str) -> APIError:
    return _error(
        403,
        GrpcCode.PERMISSION_DENIED,
        Code.PERMISSION_DENIED,
        f"access denied by policy to get {_go_quote(name)} from {_go_quote(store)}",
    )


def secret_get_failed(store: str, name: str, problem: object) -> APIError:
    return _error(
        500,
        GrpcCode.INTERNAL,
        Code.SECRET_GET,
        f"failed getting secret with key {name} from secret store {store}: {problem}",
    )


def secret_bulk_get_failed(store: str, problem: object) -> APIError:
    return _error(
        500,
        GrpcCode.INTERNAL,
        Code.SECRET_GET,
        f"failed getting secrets from secret store {store}: {problem}",
    )


def outbox_publish_failed(app_id: str, problem: str) -> APIError:
    return _error(
        500,
        GrpcCode.INTERNAL,
        Code.PUBLISH_OUTBOX,
        f"error while publishing outbox message: {problem}",
        ErrorInfo("DAPR_PUBSUB_OUTBOX", {"appID": app_id, "error": problem}),
    )


# --- bindings ---------------------------------------------------------------------------------------


def output_binding_failed(name: str, problem: object) -> APIError:
    return _error(
        500,
        GrpcCode.INTERNAL,
        Code.INVOKE_OUTPUT_BINDING,
        f"error invoking output binding {name}: {problem}",
    )


# --- distributed lock ------------------------------------------------------------------------------


def lock_expiry_not_positive(store: str) -> APIError:
    return malformed(f"ExpiryInSeconds is not positive in lock store {store}")


def lock_resource_id_empty(store: str) -> APIError:
    return malformed(f"ResourceId is empty in lock store {store}")


def lock_owner_empty(store: str) -> APIError:
    return malformed(f"LockOwner is empty in lock store {store}")


def lock_store_not_configured() -> APIError:
    return _error(
        500, GrpcCode.FAILED_PRECONDITION, Code.LOCK_STORE_NOT_CONFIGURED, "lock store is not configured"
    )


def lock_store_not_found(store: str) -> APIError:
    return _error(400, GrpcCode.INVALID_ARGUMENT, Code.LOCK_STORE_NOT_FOUND, f"lock store {store} not found")


def lock_try_failed(problem: object) -> APIError:
    return _error(500, GrpcCode.INTERNAL, Code.LOCK_TRY, f"failed to try acquiring lock: {problem}")


def lock_unlock_failed(problem: object) -> APIError:
    return _error(500, GrpcCode.INTERNAL, Code.LOCK_UNLOCK, f"failed to release lock: {problem}")


# --- configuration API -----------------------------------------------------------------------------


def _go_list(keys: Sequence[str]) -> str:
    # daprd formats the key list with Go's %s: [a b]
    return "[" + " ".join(keys) + "]"


def configuration_stores_not_configured() -> APIError:
    return _error(
        500,
        GrpcCode.FAILED_PRECONDITION,
        Code.CONFIGURATION_STORE_NOT_CONFIGURED,
        "configuration stores not configured",
    )


def configuration_store_not_found(store: str) -> APIError:
    return _error(
        400,
        GrpcCode.INVALID_ARGUMENT,
        Code.CONFIGURATION_STORE_NOT_FOUND,
        f"configuration store {store} not found",
    )


def configuration_get_failed(keys: Sequence[str], store: str, problem: object) -> APIError:
    return _error(
        500,
        GrpcCode.INTERNAL,
        Code.CONFIGURATION_GET,
        f"failed to get {_go_list(keys)} from Configuration store {store}: {problem}",
    )


def configuration_subscribe_failed(keys: Sequence[str], store: str, problem: object) -> APIError:
    return _error(
        500,
        GrpcCode.INVALID_ARGUMENT,
        Code.CONFIGURATION_SUBSCRIBE,
        f"failed to subscribe {_go_list(keys)} from Configuration store {store}: {problem}",
    )


def app_channel_nil() -> APIError:
    return _error(
        500,
        GrpcCode.INTERNAL,
        Code.APP_CHANNEL_NIL,
        "app channel is not initialized. cannot subscribe to configuration updates",
    )


# --- blocks Pillion lacks --------------------------------------------------------------------------


def crypto_providers_not_configured() -> APIError:
    return _error(
        500, GrpcCode.INTERNAL, Code.CRYPTO_PROVIDERS_NOT_CONFIGURED, "crypto providers not configured"
    )


def crypto_provider_not_found(name: str) -> APIError:
    return _error(
        400, GrpcCode.INVALID_ARGUMENT, Code.CRYPTO_PROVIDER_NOT_FOUND, f"crypto provider {name} not found"
    )


def conversation_not_found(name: str) -> APIError:
    return _error(
        400,
        GrpcCode.INVALID_ARGUMENT,
        Code.CONVERSATION_NOT_FOUND,
        f"failed finding conversation component {name}",
    )


def _go_quote(text: str) -> str:
    # daprd formats these names with Go's %q.
    return json.dumps(text, ensure_ascii=False)


# --- Pillion's admin API: dead letters (docs/dashboard.md; daprd has no such API) ------------------


def deadletters_not_supported(pubsub: str) -> APIError:
    return _error(
        400,
        GrpcCode.FAILED_PRECONDITION,
        Code.DEADLETTERS_NOT_SUPPORTED,
        f"pubsub {pubsub} cannot list the messages a topic holds; dead letters can be inspected on "
        "pubsub.sqlite, pubsub.redis and pubsub.jetstream (docs/dashboard.md)",
    )


def deadletter_not_found(topic: str, message_id: str) -> APIError:
    return _error(
        404, GrpcCode.NOT_FOUND, Code.DEADLETTER_NOT_FOUND, f"message {message_id} is not on topic {topic}"
    )


def deadletters_failed(pubsub: str, topic: str, what: str, problem: str) -> APIError:
    return _error(
        500,
        GrpcCode.INTERNAL,
        Code.DEADLETTERS,
        f"{what} on topic {topic} in pubsub {pubsub} failed: {problem}",
    )


def deadletters_replay_failed(problem: str) -> APIError:
    """A replay stopped at a message it could not move (the answer also lists those moved)."""
    return _error(500, GrpcCode.INTERNAL, Code.DEADLETTERS_REPLAY, problem)

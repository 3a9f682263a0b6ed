"""Dapr wire-format helpers shared by the endpoint modules: bodies, JSON, metadata, responses."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

from starlette.requests import Request
from starlette.responses import Response

from runtime import gojson
from runtime.errors import (
    APIError,
    BadRequest,
    Detail,
    ErrorInfo,
    ResourceInfo,
    body_too_large,
    malformed,
)

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
JSON = "application/json"


class PathUnescapeError(ValueError):
    """A path parameter with a broken %-escape: daprd answers 400 in plain text."""


def path_param(request: Request, name: str) -> str:
    """Path parameters are query-unescaped as daprd does: ``%2F`` is ``/`` and ``+`` a space."""
    raw: str = request.path_params[name]
    if "%" not in raw and "+" not in raw:
        return raw
    if _BAD_ESCAPE.search(raw):
        raise PathUnescapeError(raw)
    return unquote_plus(raw)


def query_metadata(request: Request) -> dict[str, str]:
    """``metadata.<k>=<v>`` query values, the first value of a repeated key winning."""
    if not request.scope["query_string"]:
        return {}
    found: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key.startswith("metadata.") and key[9:] not in found:
            found[key[9:]] = value
    return found


async def read_body(request: Request) -> bytes:
    limit: int = request.app.state.max_body_size
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise body_too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON value {name}")


def decode_json(body: bytes) -> Any:
    """Parse a request body as daprd does (strict JSON: no NaN, no trailing commas)."""
    try:
        return gojson.settle(json.loads(body, parse_constant=_reject_constant), body)
    except RecursionError:
        raise malformed(f"failed deserializing HTTP body: {gojson.JSONTooDeep()}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise malformed(f"failed deserializing HTTP body: {exc}") from None


def field(obj: Mapping[str, Any], name: str) -> Any:
    """Look up a JSON field case-insensitively, as Go's encoding/json matches struct fields."""
    if name in obj:
        return obj[name]
    lowered = name.lower()
    for key, value in obj.items():
        if key.lower() == lowered:
            return value
    return None


def string_map(value: Any, what: str) -> dict[str, str]:
    """A JSON ``map[string]string``: null means empty; any non-string value is a type error."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise malformed(f"failed deserializing HTTP body: {what} must be an object of strings")
    return value


def optional_string(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise malformed(f"failed deserializing HTTP body: {what} must be a string")
    return value


def encode_value(value: Any) -> bytes:
    """How a state value is stored: compact JSON with sorted keys, as daprd re-encodes it."""
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        # Python reads 1e400 as infinity, which has no JSON spelling; Go refuses the number.
        raise malformed("failed deserializing HTTP body: a number in the value is out of range") from None
    return text.encode()


def json_response(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    # daprd writes these bodies with Go's json.Encoder: compact, sorted keys, trailing newline.
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"
    return Response(body.encode(), status, dict(headers) if headers else None, media_type=JSON)


def raw_json(data: bytes) -> bytes:
    """Stored bytes as a JSON value to embed in a response (base64 text if they are not JSON)."""
    try:
        json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return json.dumps(base64.b64encode(data).decode()).encode()
    return data


NO_CONTENT = 204


def no_content() -> Response:
    return Response(status_code=NO_CONTENT)


def error_response(error: APIError) -> Response:
    """daprd's JSON error body; the details are those the error names, in its order."""
    payload: dict[str, Any] = {"errorCode": str(error.code), "message": error.message}
    if error.details:
        payload["details"] = [_detail(d) for d in error.details]
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return Response(body.encode(), error.status, media_type=JSON)


_GOOGLE_RPC = "type.googleapis.com/google.rpc."


def _detail(detail: Detail) -> dict[str, Any]:
    """A detail as daprd's HTTP API writes it: the proto's field names, ``@type`` first."""
    if isinstance(detail, ErrorInfo):
        return {
            "@type": _GOOGLE_RPC + "ErrorInfo",
            "domain": detail.domain,
            "metadata": dict(detail.metadata),
            "reason": detail.reason,
        }
    if isinstance(detail, ResourceInfo):
        return {
            "@type": _GOOGLE_RPC + "ResourceInfo",
            "description": detail.description,
            "owner": detail.owner,
            "resource_name": detail.resource_name,
            "resource_type": detail.resource_type,
        }
    if isinstance(detail, BadRequest):
        return {
            "@type": _GOOGLE_RPC + "BadRequest",
            "field_violations": [{"field": detail.field, "description": detail.description}],
        }
    return {
        "@type": _GOOGLE_RPC + "Help",
        "links": [{"description": detail.description, "url": detail.url}],
    }

"""Dapr wire-format helpers shared by the endpoint modules: bodies, JSON, metadata, responses."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any
from urllib.parse import unquote_plus

from starlette.datastructures import QueryParams
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive

from runtime.compat import gojson
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

Headers = list[tuple[bytes, bytes]]
# An answer as the hot routes build it: status, headers, body. No Response object on the way.
Reply = tuple[int, Headers, bytes]
CONTENT_TYPE_JSON = (b"content-type", JSON.encode())


class PathUnescapeError(ValueError):
    """A path parameter with a broken %-escape: daprd answers 400 in plain text."""


def path_param(request: Request, name: str) -> str:
    return unescape(request.path_params[name])


def unescape(raw: str) -> str:
    """Path parameters are query-unescaped as daprd does: ``%2F`` is ``/`` and ``+`` a space."""
    if "%" not in raw and "+" not in raw:
        return raw
    if _BAD_ESCAPE.search(raw):
        raise PathUnescapeError(raw)
    return unquote_plus(raw)


def query_metadata(request: Request) -> dict[str, str]:
    return metadata_from_query(request.scope["query_string"])


def metadata_from_query(query: bytes) -> dict[str, str]:
    """``metadata.<k>=<v>`` query values, the first value of a repeated key winning."""
    if not query:
        return {}
    found: dict[str, str] = {}
    for key, value in QueryParams(query).multi_items():
        if key.startswith("metadata.") and key[9:] not in found:
            found[key[9:]] = value
    return found


async def read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    limit: int = request.app.state.max_body_size
    return await receive_body(request.receive, None if declared is None else declared.encode(), limit)


async def receive_body(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (declared or received)."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise body_too_large(limit)
    message = await receive()
    if message["type"] != "http.request":
        raise ClientDisconnect()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise body_too_large(limit)
        return body
    chunks = [body]
    size = len(body)
    while True:
        if size > limit:
            raise body_too_large(limit)
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if size > limit:
        raise body_too_large(limit)
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON value {name}")


# Made once: json.loads and json.dumps build a new decoder or encoder per call when given options.
_REQUEST_JSON = json.JSONDecoder(parse_constant=_reject_constant)
_VALUE_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def decode_json(body: bytes) -> Any:
    """Parse a request body as daprd does (strict JSON: no NaN, no trailing commas)."""
    try:
        # As json.loads reads bytes: UTF-8, -16 or -32, a UTF-8 byte order mark skipped.
        text = body.decode(json.detect_encoding(body), "surrogatepass")
        return gojson.settle(_REQUEST_JSON.decode(text), body)
    except RecursionError:
        raise malformed(f"failed deserializing HTTP body: {gojson.JSONTooDeep()}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise malformed(f"failed deserializing HTTP body: {exc}") from None


def known_fields(obj: Mapping[str, Any], names: frozenset[str]) -> Callable[[str], Any]:
    """A :func:`field` lookup for ``obj``: a plain ``get`` when every key is one of ``names``
    spelled exactly (the usual case), which then finds the same values."""
    if obj.keys() <= names:
        return obj.get
    return partial(field, obj)


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
        text = _VALUE_JSON.encode(value)
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
NO_CONTENT_REPLY: Reply = (NO_CONTENT, [], b"")


def no_content() -> Response:
    return Response(status_code=NO_CONTENT)


class ReplyResponse(Response):
    """A :data:`Reply` served through Starlette, headers exactly as built."""

    def __init__(self, reply: Reply) -> None:
        self.status_code, self.raw_headers, self.body = reply
        self.background = None


def json_reply(status: int, body: bytes, headers: Headers | None = None) -> Reply:
    """A JSON body, with the headers Starlette's Response would write, in its order."""
    found = headers or []
    found.append((b"content-length", str(len(body)).encode()))
    found.append(CONTENT_TYPE_JSON)
    return status, found, body


def error_reply(error: APIError) -> Reply:
    """daprd's JSON error body; the details are those the error names, in its order."""
    payload: dict[str, Any] = {"errorCode": str(error.code), "message": error.message}
    if error.details:
        payload["details"] = [_detail(d) for d in error.details]
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return json_reply(error.status, body.encode())


def error_response(error: APIError) -> Response:
    return ReplyResponse(error_reply(error))


def text_reply(status: int, text: str) -> Reply:
    body = text.encode()
    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"text/plain; charset=utf-8")]
    return status, headers, body


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

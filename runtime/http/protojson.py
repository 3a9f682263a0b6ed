"""Reading request bodies the way daprd's protojson decoding reads them (alpha APIs: lock).

A field is found under its JSON name (``resourceId``) or its proto name (``resource_id``); unknown
fields are ignored; ``null`` means the default; an empty body is an empty message.
"""

from __future__ import annotations

import re
from typing import Any

from runtime.errors import malformed
from runtime.http.wire import decode_json

_INT32 = (-(2**31), 2**31 - 1)
_INTEGER_TEXT = re.compile(r"-?[0-9]+")


def message(body: bytes) -> dict[str, Any]:
    if not body:
        return {}
    decoded = decode_json(body)
    if not isinstance(decoded, dict):
        raise malformed("failed deserializing HTTP body: the body must be a JSON object")
    return decoded


def _lookup(fields: dict[str, Any], json_name: str, proto_name: str) -> Any:
    value = fields.get(json_name)
    return fields.get(proto_name) if value is None else value


def string(fields: dict[str, Any], json_name: str, proto_name: str) -> str:
    value = _lookup(fields, json_name, proto_name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise malformed(f"failed deserializing HTTP body: {json_name} must be a string")
    return value


def int32(fields: dict[str, Any], json_name: str, proto_name: str) -> int:
    value = _lookup(fields, json_name, proto_name)
    if value is None:
        return 0
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()):
        number = int(value.strip())
    if number is None or not _INT32[0] <= number <= _INT32[1]:
        raise malformed(f"failed deserializing HTTP body: {json_name} must be a 32-bit integer")
    return number

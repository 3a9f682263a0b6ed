"""A CloudEvent as daprd hands it to gRPC receivers: ``TopicEventRequest`` (docs/grpc.md, "Events")."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from google.protobuf import struct_pb2

from runtime.compat import cloudevents, gojson
from runtime.grpc.protos import appcallback_pb2

# The attributes that have fields of their own; every other key goes into ``extensions``.
_OWN = frozenset({"id", "source", "type", "specversion", "datacontenttype", "data", "data_base64"})


def _text(event: dict[str, Any], name: str) -> str:
    value = event.get(name)
    return value if isinstance(value, str) else ""


def event_data(event: dict[str, Any], content_type: str) -> bytes:
    """``data_base64`` decoded; text and XML as their text; JSON as compact JSON. daprd drops the
    data of any other content type, and so does Pillion."""
    encoded = event.get("data_base64")
    if isinstance(encoded, str):
        try:
            return base64.b64decode(encoded)
        except (binascii.Error, ValueError):
            return b""
    data = event.get("data")
    if data is None:
        return b""
    media = content_type.split(";", 1)[0].strip().lower()
    if media.startswith("text/") or media == "application/xml":
        return data.encode() if isinstance(data, str) else gojson.go_marshal(data)
    if cloudevents.is_json(content_type) or cloudevents.is_cloudevent(content_type):
        return gojson.go_marshal(data)
    return b""


def topic_event(
    event: dict[str, Any], pubsub: str, topic: str, path: str
) -> appcallback_pb2.TopicEventRequest:
    content_type = _text(event, "datacontenttype")
    extensions = struct_pb2.Struct()
    extra = {k: v for k, v in event.items() if k not in _OWN and v is not None}
    if extra:
        try:
            extensions.update(extra)
        except (TypeError, ValueError):
            extensions.update({k: str(v) for k, v in extra.items()})
    return appcallback_pb2.TopicEventRequest(
        id=_text(event, "id"),
        source=_text(event, "source"),
        type=_text(event, "type"),
        spec_version=_text(event, "specversion"),
        data_content_type=content_type,
        data=event_data(event, content_type),
        topic=topic,
        pubsub_name=pubsub,
        path=path,
        extensions=extensions,
    )


def call_metadata(headers: dict[str, bytes]) -> list[tuple[str, str]]:
    """The delivery's headers as gRPC metadata: lower-case names, no content type or length."""
    found = []
    for name, value in headers.items():
        key = name.lower()
        if key in ("content-type", "content-length") or key.endswith("-bin"):
            continue
        found.append((key, value.decode("utf-8", errors="replace")))
    return found

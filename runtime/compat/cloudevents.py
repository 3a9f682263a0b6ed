"""CloudEvents 1.0 envelopes built and read as daprd does (docs/pubsub.md: Publishing, Delivery).

Envelopes are encoded as Go's ``json.Marshal`` writes a map: compact, keys sorted, ``<``, ``>``,
``&``, U+2028 and U+2029 escaped. Numbers in the published body keep their exact text (daprd
decodes with ``UseNumber``), so ``1.10`` or a 30-digit integer travel unchanged.
"""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime, timedelta
from random import getrandbits
from typing import Any

from runtime.compat.gojson import decode_precise, encode

SPEC_VERSION = "1.0"
DEFAULT_TYPE = "com.dapr.event.sent"
DEFAULT_SOURCE = "Dapr"
DEFAULT_DATA_CONTENT_TYPE = "text/plain"
CLOUDEVENTS_JSON = "application/cloudevents+json"
OCTET_STREAM = "application/octet-stream"

_OVERRIDE_PREFIX = "cloudevent."


# --- content types (components-contrib contenttype rules) ------------------------------------


def _is(content_type: str, expected: str) -> bool:
    lowered = content_type.lower()
    if lowered == expected:
        return True
    semicolon = lowered.find(";")
    return semicolon >= 0 and lowered[:semicolon] == expected


def is_cloudevent(content_type: str) -> bool:
    return _is(content_type, CLOUDEVENTS_JSON)


def is_json(content_type: str) -> bool:
    return _is(content_type, "application/json")


def is_binary(content_type: str) -> bool:
    return _is(content_type, OCTET_STREAM)


def is_text(content_type: str) -> bool:
    return content_type.lower().startswith("text/") or _is(content_type, "application/xml")


def _carries_base64(content_type: str) -> bool:
    # daprd base64-encodes protobuf only when it parses as a CloudEvent; Pillion has no protobuf
    # parser and keeps every protobuf body intact as data_base64 rather than mangling it as text.
    return (
        is_binary(content_type)
        or _is(content_type, "application/cloudevents+protobuf")
        or _is(content_type, "application/x-protobuf")
    )


# --- envelopes --------------------------------------------------------------------------------


_clock: list[Any] = [-1, ""]  # the whole second last formatted, and its text


def _now_rfc3339() -> str:
    # Go's time.Now().Format(time.RFC3339): local offset, whole seconds, "Z" for UTC. Formatted
    # once a second: every publish in that second carries the same text.
    second = int(time.time())
    if second != _clock[0]:
        text = datetime.fromtimestamp(second).astimezone().isoformat()
        _clock[:] = [second, text[:-6] + "Z" if text.endswith("+00:00") else text]
    return str(_clock[1])


def new_event_id() -> str:
    """A random (version 4) UUID in its text form. ``random`` rather than ``uuid.uuid4``'s
    os.urandom, as for span ids: ids must be unique, not secret, and this is per message."""
    bits = getrandbits(128) & ~(0xF000 << 64 | 0xC000 << 48) | (0x4000 << 64 | 0x8000 << 48)
    text = f"{bits:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _overrides(metadata: dict[str, str]) -> dict[str, str]:
    # mapstructure.WeakDecode of metadata into daprd's CloudEvent struct: names ignore case.
    found: dict[str, str] = {}
    for key, value in metadata.items():
        lowered = key.lower()
        if lowered.startswith(_OVERRIDE_PREFIX):
            found.setdefault(lowered[len(_OVERRIDE_PREFIX) :], value)
    return found


def new_envelope(
    *,
    app_id: str,
    topic: str,
    pubsub: str,
    content_type: str,
    data: bytes,
    traceparent: str,
    tracestate: str,
    metadata: dict[str, str],
) -> dict[str, Any]:
    """The envelope daprd wraps around a published body that is not itself a CloudEvent."""
    override = _overrides(metadata)
    trace_id = override.get("traceid", traceparent)
    if override.get("traceparent"):
        trace_id = override["traceparent"]
    content_type = content_type or DEFAULT_DATA_CONTENT_TYPE
    envelope: dict[str, Any] = {
        "id": override.get("id") or new_event_id(),
        "specversion": SPEC_VERSION,
        "datacontenttype": content_type,
        "source": override.get("source", app_id) or DEFAULT_SOURCE,
        "type": override.get("type") or DEFAULT_TYPE,
        "topic": topic,
        "pubsubname": pubsub,
        "traceid": trace_id,
        "traceparent": trace_id,
        "tracestate": override.get("tracestate", tracestate),
        "time": _now_rfc3339(),
    }
    if is_json(content_type):
        try:
            envelope["data"] = decode_precise(data)
        except ValueError:
            envelope["data"] = data.decode("utf-8", errors="replace")
    elif _carries_base64(content_type):
        envelope["data_base64"] = base64.b64encode(data).decode("ascii")
    else:
        envelope["data"] = data.decode("utf-8", errors="replace")
    if override.get("subject"):
        envelope["subject"] = override["subject"]
    return envelope


def encode_new_envelope(
    *,
    app_id: str,
    topic: str,
    pubsub: str,
    content_type: str,
    data: bytes,
    traceparent: str,
    tracestate: str,
    metadata: dict[str, str],
    expiration: str | None = None,
) -> bytes:
    """``encode(new_envelope(...))`` (with ``expiration`` set when given), in one JSON encode: the
    body's value is encoded once and set into the envelope, whose other fields are mostly fixed
    text. Metadata overriding CloudEvent fields takes the general way."""
    if _overrides(metadata):
        envelope = new_envelope(
            app_id=app_id,
            topic=topic,
            pubsub=pubsub,
            content_type=content_type,
            data=data,
            traceparent=traceparent,
            tracestate=tracestate,
            metadata=metadata,
        )
        if expiration is not None:
            envelope["expiration"] = expiration
        return encode(envelope)
    content_type = content_type or DEFAULT_DATA_CONTENT_TYPE
    if is_json(content_type):
        try:
            value: Any = decode_precise(data)
        except ValueError:
            value = data.decode("utf-8", errors="replace")
        head = b'{"data":' + encode(value)
    elif _carries_base64(content_type):
        head = b'{"data_base64":"' + base64.b64encode(data) + b'"'
    else:
        head = b'{"data":' + encode(data.decode("utf-8", errors="replace"))
    # Keys in Go's (sorted) order; the trace ids are hex and dashes when they come from our tracer.
    trace = encode(traceparent) if _needs_quoting(traceparent) else b'"' + traceparent.encode() + b'"'
    return b"".join(
        (
            head,
            b',"datacontenttype":',
            _quoted(content_type),
            b"" if expiration is None else b',"expiration":' + encode(expiration),
            b',"id":"',
            new_event_id().encode(),
            b'","pubsubname":',
            _quoted(pubsub),
            b',"source":',
            _quoted(app_id or DEFAULT_SOURCE),
            b',"specversion":"1.0","time":"',
            _now_rfc3339().encode(),
            b'","topic":',
            _quoted(topic),
            b',"traceid":',
            trace,
            b',"traceparent":',
            trace,
            b',"tracestate":',
            encode(tracestate) if tracestate else b'""',
            b',"type":"com.dapr.event.sent"}',
        )
    )


_QUOTED: dict[str, bytes] = {}
_QUOTED_LIMIT = 4096


def _quoted(text: str) -> bytes:
    """``encode(text)`` for the few strings every envelope repeats (topics, names, types)."""
    found = _QUOTED.get(text)
    if found is None:
        if len(_QUOTED) >= _QUOTED_LIMIT:  # many topics: start over rather than grow
            _QUOTED.clear()
        found = _QUOTED[text] = encode(text)
    return found


def _needs_quoting(text: str) -> bool:
    return not text.replace("-", "").isalnum() or not text.isascii()


def from_cloudevent(
    body: bytes, *, topic: str, pubsub: str, traceparent: str, tracestate: str
) -> dict[str, Any]:
    """A published CloudEvent, completed as daprd completes it; ``ValueError`` if it is not one."""
    event = decode_precise(body)
    if not isinstance(event, dict):
        raise ValueError("a CloudEvent must be a JSON object")
    event.setdefault("time", _now_rfc3339())
    if "traceid" not in event:
        event["traceid"] = traceparent
        event["traceparent"] = traceparent
    event.setdefault("tracestate", tracestate)
    event["topic"] = topic
    event["pubsubname"] = pubsub
    for key, default in (("source", DEFAULT_SOURCE), ("type", DEFAULT_TYPE), ("specversion", SPEC_VERSION)):
        if event.get(key) is None:
            event[key] = default
    return event


def set_expiration(envelope: dict[str, Any], ttl_seconds: float) -> None:
    """Dapr's ``expiration`` field, for brokers that cannot expire messages themselves."""
    envelope["expiration"] = expiration(ttl_seconds)


def expiration(ttl_seconds: float) -> str:
    moment = datetime.now(UTC) + timedelta(seconds=ttl_seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def from_raw_payload(data: bytes, *, topic: str, pubsub: str, metadata: dict[str, str]) -> dict[str, Any]:
    """What a rawPayload subscriber receives: the message bytes wrapped as data_base64."""
    event: dict[str, Any] = {
        "id": new_event_id(),
        "specversion": SPEC_VERSION,
        "datacontenttype": OCTET_STREAM,
        "source": DEFAULT_SOURCE,
        "type": DEFAULT_TYPE,
        "topic": topic,
        "pubsubname": pubsub,
        "data_base64": base64.b64encode(data).decode("ascii"),
    }
    if "traceid" in metadata:
        event["traceid"] = metadata["traceid"]
    if "traceparent" in metadata:
        event["traceparent"] = event["traceid"] = metadata["traceparent"]
    if "tracestate" in metadata:
        event["tracestate"] = metadata["tracestate"]
    return event


def has_expired(event: dict[str, Any]) -> bool:
    value = event.get("expiration")
    if not isinstance(value, str) or not value:
        return False
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return False
    if moment.tzinfo is None:
        return False
    return moment < datetime.now(UTC)

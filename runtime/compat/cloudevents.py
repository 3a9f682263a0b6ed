"""CloudEvents 1.0 envelopes built and read as daprd does (docs/pubsub.md: Publishing, Delivery).

Envelopes are encoded as Go's ``json.Marshal`` writes a map: compact, keys sorted, ``<``, ``>``,
``&``, U+2028 and U+2029 escaped. Numbers in the published body keep their exact text (daprd
decodes with ``UseNumber``), so ``1.10`` or a 30-digit integer travel unchanged.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import re
import time
from datetime import UTC, datetime, timedelta
from random import getrandbits
from typing import Any

from runtime.compat import gojson

SPEC_VERSION = "1.0"
DEFAULT_TYPE = "com.dapr.event.sent"
DEFAULT_SOURCE = "Dapr"
DEFAULT_DATA_CONTENT_TYPE = "text/plain"
CLOUDEVENTS_JSON = "application/cloudevents+json"
OCTET_STREAM = "application/octet-stream"

_HTML_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_NO_TRACE, _NO_SPAN = "0" * 32, "0" * 16
_ODD_HEX = frozenset("13579bdf")  # trace-flags with the sampled bit set end in one of these
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


# --- JSON as Go reads and writes it -----------------------------------------------------------


class _Literal:
    """A JSON number that Python would print differently (``1.10``, ``1e3``, ``-0``): kept as text."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class _NeedsExactEncoding(Exception):
    pass


def _float(text: str) -> float | _Literal:
    value = float(text)
    return value if repr(value) == text else _Literal(text)


def _int(text: str) -> int | _Literal:
    if text == "-0":
        return _Literal(text)
    try:
        return int(text)
    except ValueError:  # beyond Python's int-from-text digit limit
        return _Literal(text)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON value {name}")


_PRECISE = json.JSONDecoder(parse_float=_float, parse_int=_int, parse_constant=_reject_constant)
# Integers read in C: exact too, but for "-0" (checked for first) and integers too long for
# Python's int (an error, on which _PRECISE reads the body again).
_PRECISE_FAST = json.JSONDecoder(parse_float=_float, parse_constant=_reject_constant)
_PLAIN = json.JSONDecoder(parse_constant=_reject_constant)
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _first_value(decoder: json.JSONDecoder, body: bytes) -> Any:
    # Go's json.Decoder.Decode reads the first value and leaves whatever follows unread.
    text = body.decode("utf-8", errors="replace")
    start = _WHITESPACE.match(text)
    try:
        value, _ = decoder.raw_decode(text, start.end() if start else 0)
    except RecursionError:
        raise gojson.JSONTooDeep from None
    return gojson.settle(value, body)


def decode_precise(body: bytes) -> Any:
    """The first JSON value in ``body``, numbers kept exactly; ``ValueError`` if there is none."""
    if b"-0" not in body:
        with contextlib.suppress(ValueError):
            return _first_value(_PRECISE_FAST, body)
    return _first_value(_PRECISE, body)


def decode_plain(body: bytes) -> Any:
    """The first JSON value in ``body`` as Python reads it; ``ValueError`` if there is none."""
    return _first_value(_PLAIN, body)


def as_doubles(value: Any) -> Any:
    """``value`` with every integer made a float, as Go decodes JSON numbers for CEL routing."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, dict):
        return {k: as_doubles(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_doubles(v) for v in value]
    return value


def _refuse(value: Any) -> Any:
    raise _NeedsExactEncoding


_GO_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_refuse)


def encode(value: Any) -> bytes:
    """``value`` as Go's json.Marshal writes it."""
    try:
        text = _GO_JSON.encode(value)
    except _NeedsExactEncoding:
        parts: list[str] = []
        _encode_exact(value, parts)
        text = "".join(parts)
    if "<" in text or ">" in text or "&" in text or "\u2028" in text or "\u2029" in text:
        text = text.translate(_HTML_ESCAPES)
    return text.encode("utf-8")


def _encode_exact(value: Any, out: list[str]) -> None:
    if isinstance(value, _Literal):
        out.append(value.text)
    elif isinstance(value, dict):
        out.append("{")
        for index, key in enumerate(sorted(value)):
            if index:
                out.append(",")
            out.append(json.dumps(key, ensure_ascii=False))
            out.append(":")
            _encode_exact(value[key], out)
        out.append("}")
    elif isinstance(value, list):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode_exact(item, out)
        out.append("]")
    else:
        out.append(json.dumps(value, ensure_ascii=False))


def go_number(value: float) -> str:
    """A float64 as Go's encoding/json writes it (``1`` for 1.0, ``1e+21`` past 1e21)."""
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):
        mantissa, _, exponent = f"{value!r}".partition("e")
        if not exponent:
            mantissa, _, exponent = f"{value:e}".partition("e")
        sign = "-" if exponent.startswith("-") else "+"
        return f"{mantissa}e{sign}{exponent.lstrip('+-').lstrip('0') or '0'}"
    from decimal import Decimal  # only bulk events with fractions get here

    text = format(Decimal(repr(value)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def go_marshal(value: Any) -> bytes:
    """A decoded JSON value marshalled again as Go does; integers keep every digit (Go would
    round them through float64)."""
    if isinstance(value, bool | int | str) or value is None:
        return encode(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            # Python reads 1e400 as infinity; Go refuses to decode the number at all.
            raise ValueError(f"number {value} is out of range")
        return go_number(value).encode()
    if isinstance(value, list):
        return b"[" + b",".join(go_marshal(v) for v in value) + b"]"
    items = sorted(value.items())
    return b"{" + b",".join(encode(k) + b":" + go_marshal(v) for k, v in items) + b"}"


# --- tracing ----------------------------------------------------------------------------------


def child_traceparent(parent: str | None) -> str:
    """A W3C traceparent for a new span: continues ``parent`` when it is valid, else a new trace.

    daprd samples 1 in 10,000 traces by default, so a new trace is written as not sampled (``00``).
    Every API request makes one, so it is kept cheap: ids need to be unique, not secret, and
    ``random`` (as the OpenTelemetry SDK uses) costs a fraction of ``os.urandom``.
    """
    span = (getrandbits(64) or 1).to_bytes(8).hex()
    if parent:
        match = _TRACEPARENT.fullmatch(parent) or _TRACEPARENT.fullmatch(parent.strip().lower())
        if match and match[1] != "ff" and match[2] != _NO_TRACE and match[3] != _NO_SPAN:
            sampled = match[4][1] in _ODD_HEX
            return "00-" + match[2] + "-" + span + ("-01" if sampled else "-00")
    return "00-" + (getrandbits(128) or 1).to_bytes(16).hex() + "-" + span + "-00"


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

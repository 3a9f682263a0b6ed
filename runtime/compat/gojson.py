"""JSON as Go's encoding/json reads and writes it, where Python's json module differs.

Reading:

* A lone UTF-16 surrogate escape (``"\\ud800"``) becomes U+FFFD, as Go decodes it. Python keeps the
  surrogate, and no UTF-8 encoder takes it afterwards, so the value could be neither stored nor sent.
* Nesting is limited to :data:`MAX_DEPTH` levels. Go allows 10,000; Python's recursion limit stops
  far sooner, and a value that only just decoded would fail later while being re-encoded, so
  Pillion refuses deep input up front as it refuses any other bad JSON.
* :func:`decode_precise` keeps a number's exact text where Python would print it differently
  (daprd decodes published bodies with ``UseNumber``), so ``1.10`` or a 30-digit integer travel
  unchanged.

Writing (:func:`encode`, :func:`go_marshal`) follows ``json.Marshal`` of a map: compact, keys
sorted, ``<``, ``>``, ``&``, U+2028 and U+2029 escaped.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from typing import Any

MAX_DEPTH = 200
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class JSONTooDeep(ValueError):
    def __init__(self) -> None:
        super().__init__(f"JSON nested deeper than {MAX_DEPTH} levels")


def settle(value: Any, raw: bytes) -> Any:
    """``value``, just decoded from ``raw``, made what Go would have decoded; ``JSONTooDeep`` if it
    nests too deeply. Costs nothing for ordinary bodies: each walk runs only when ``raw`` has what
    it looks for."""
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and not _within_depth(value):
        raise JSONTooDeep
    if _SURROGATE_ESCAPE.search(raw):
        return _without_surrogates(value)
    return value


def _within_depth(value: Any) -> bool:
    level = [value] if isinstance(value, dict | list) else []
    for _ in range(MAX_DEPTH):
        if not level:
            return True
        deeper: list[Any] = []
        for container in level:
            children = container.values() if isinstance(container, dict) else container
            deeper.extend(child for child in children if isinstance(child, dict | list))
        level = deeper
    return not level


def _without_surrogates(value: Any) -> Any:
    # Only lone surrogates remain in decoded text: json joins valid pairs into one code point.
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_without_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    return value


_HTML_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


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
        raise JSONTooDeep from None
    return settle(value, body)


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

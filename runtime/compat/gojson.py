"""Request JSON as Go's encoding/json reads it, where Python's json module differs.

* A lone UTF-16 surrogate escape (``"\\ud800"``) becomes U+FFFD, as Go decodes it. Python keeps the
  surrogate, and no UTF-8 encoder takes it afterwards, so the value could be neither stored nor sent.
* Nesting is limited to :data:`MAX_DEPTH` levels. Go allows 10,000; Python's recursion limit stops
  far sooner, and a value that only just decoded would fail later while being re-encoded, so
  Pillion refuses deep input up front as it refuses any other bad JSON.
"""

from __future__ import annotations

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

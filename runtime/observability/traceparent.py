"""W3C ``traceparent`` values for new spans, continuing a caller's trace where there is one."""

from __future__ import annotations

import re
from random import getrandbits

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_NO_TRACE, _NO_SPAN = "0" * 32, "0" * 16
_ODD_HEX = frozenset("13579bdf")  # trace-flags with the sampled bit set end in one of these


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

"""Times and durations written as Go writes them, for the metadata bindings return."""

from __future__ import annotations

from datetime import datetime


def rfc3339_nano(moment: datetime) -> str:
    """Go's ``time.RFC3339Nano`` for a UTC moment: fraction without trailing zeros, ``Z``."""
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


def duration(seconds: float) -> str:
    """Go's ``time.Duration.String()``: ``1.5ms``, ``2.003s``, ``1m30s``, ``0s``."""
    nanos = round(seconds * 1e9)
    if nanos == 0:
        return "0s"
    sign = "-" if nanos < 0 else ""
    nanos = abs(nanos)
    if nanos < 1_000:
        return f"{sign}{nanos}ns"
    if nanos < 1_000_000:
        return f"{sign}{_trim(nanos / 1_000)}µs"
    if nanos < 1_000_000_000:
        return f"{sign}{_trim(nanos / 1_000_000)}ms"
    hours, rest = divmod(nanos, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    text = f"{_trim(rest / 1e9)}s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    if minutes:
        return f"{sign}{minutes}m{text}"
    return sign + text


def _trim(value: float) -> str:
    return f"{value:.9f}".rstrip("0").rstrip(".")

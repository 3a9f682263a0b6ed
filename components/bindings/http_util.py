"""Header names as Go writes them (``http.CanonicalHeaderKey``): bindings pass metadata as HTTP
headers in both directions and daprd's users see the Go spelling."""

from __future__ import annotations


def canonical_header(name: str) -> str:
    """``content-type`` -> ``Content-Type``, ``readTimeUTC`` -> ``Readtimeutc``; names with
    characters Go does not canonicalize (spaces, ``_`` is fine) are returned as they are."""
    if not name or any(c == " " or not (c.isascii() and c.isprintable()) for c in name):
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))

"""How API requests are labelled in the metrics (counted by runtime.http.entry for every request)."""

from __future__ import annotations

BLOCKS = frozenset({"state", "publish", "secrets", "metadata", "healthz"})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def building_block(path: str) -> str:
    """``/v1.0/state/s/k`` -> ``state``; anything unlisted is ``other``, so a client cannot grow
    the number of series by calling made-up paths."""
    parts = path.split("/", 3)
    if len(parts) > 2 and parts[1].startswith("v1.0") and parts[2] in BLOCKS:
        return parts[2]
    return "other"

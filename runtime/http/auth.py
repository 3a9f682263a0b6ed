"""API token check (reference section 6.1), before routing, as daprd does it (in runtime.http.entry)."""

from __future__ import annotations

from runtime.http.wire import Reply

HEADER = b"dapr-api-token"
# Only these stay open with a token set: orchestrators probe them without credentials.
EXEMPT = frozenset({"/v1.0/healthz", "/v1.0/healthz/outbound"})
_REFUSAL = b"invalid api token\n"
_REFUSAL_HEADERS = ((b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"18"))


def refusal() -> Reply:
    """daprd's answer to a missing or wrong token."""
    return 401, list(_REFUSAL_HEADERS), _REFUSAL

"""A span per API request (opened by runtime.http.entry), sent back in the ``traceparent``
response header as daprd does; endpoints served by Starlette find it in the scope."""

from __future__ import annotations

from starlette.requests import Request

from runtime.observability.tracing import Span

# Where the request's span waits for the endpoint.
SCOPE_KEY = "pillion.span"


def request_span(request: Request) -> Span:
    """The span the entry opened for this request."""
    span: Span = request.scope[SCOPE_KEY]
    return span

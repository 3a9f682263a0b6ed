"""In an API worker of ``--workers N``: the requests only the primary sidecar can answer, passed to
its private loopback port as they came (token included) and answered as it answered.

These are the ones about the sidecar as a whole rather than a component: metadata (subscriptions,
extended metadata set with PUT), shutdown, configuration subscriptions (they push to the app from
the process that holds them) and the admin API of the dashboard and ``pillion deadletters``.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import Receive, Scope, Send

from runtime.errors import APIError, internal
from runtime.http.wire import error_reply, receive_body
from runtime.invocation.calls import HOP_BY_HOP
from runtime.invocation.http1 import AnswerError, ConnectError, ConnectionPool

log = logging.getLogger("pillion.workers")
_START = "http.response.start"
_BODY = "http.response.body"
# Set by this process's own server (uvicorn writes the date) or for this hop.
_NOT_PASSED = HOP_BY_HOP | {"host", "content-length", "date"}
# The primary answers these at once (a dead-letter replay is the slowest); a hung primary is
# reported rather than waited for.
_ANSWER_WITHIN = 60.0


def for_primary(path: str) -> bool:
    """Whether the primary answers ``path`` (cleaned as the entry cleans it)."""
    if path in ("/v1.0/metadata", "/v1.0/shutdown"):
        return True
    if path.startswith(("/v1.0/metadata/", "/v1.0-alpha1/pillion/")):
        return True
    return "/configuration/" in path and path.endswith(("/subscribe", "/unsubscribe"))


class PrimaryForwarder:
    def __init__(self, port: int, max_body_size: int) -> None:
        self._pool = ConnectionPool("127.0.0.1", port)
        self._limit = max_body_size

    async def forward(self, scope: Scope, receive: Receive, send: Send) -> int:
        """Pass the request on; the status answered."""
        declared: bytes | None = None
        headers: list[tuple[str, str]] = []
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            if name.decode("latin-1") not in _NOT_PASSED:
                headers.append((name.decode("latin-1"), value.decode("latin-1")))
        try:
            body = await receive_body(receive, declared, self._limit)
            target = scope.get("raw_path") or scope["path"].encode()
            if scope["query_string"]:
                target += b"?" + scope["query_string"]
            async with asyncio.timeout(_ANSWER_WITHIN):
                answer = await self._pool.request(
                    scope["method"], target.decode("latin-1"), headers, body or None, self._limit
                )
                content = answer.content
                if content is None:
                    content = b"".join([chunk async for chunk in answer.body])
        except APIError as exc:
            status, raw_headers, content = error_reply(exc)
        except (ConnectError, AnswerError, TimeoutError) as exc:
            reason = str(exc) or f"no answer within {_ANSWER_WITHIN:g}s"
            log.warning(
                "the primary sidecar did not answer %s %s: %s", scope["method"], scope["path"], reason
            )
            status, raw_headers, content = error_reply(internal())
        else:
            status = answer.status
            raw_headers = [
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in answer.headers
                if name.lower() not in _NOT_PASSED
            ]
            raw_headers.append((b"content-length", str(len(content)).encode()))
        await send({"type": _START, "status": status, "headers": raw_headers})
        await send({"type": _BODY, "body": content})
        return status

    def close(self) -> None:
        self._pool.close()

"""Connection limits of the HTTP API: deadlines on reading a request, and a cap on connections.

uvicorn bounds only the idle time between requests. A client that sends half a request line, or a
body that never ends, would hold its connection (and a file descriptor) for ever, and enough of
them starve the process of descriptors. So, on top of uvicorn's httptools protocol:

* A request's headers must arrive within ``read_header_timeout`` of the connection opening or of
  the request's first byte (daprd: 10 s), and its body within ``read_body_timeout`` after the
  headers. A connection that misses either is closed (with 408 when part of a request came).
* At most ``max_connections`` connections are served at once. Connections beyond the cap are
  still accepted, given a short deadline, and answered only if they ask for a health probe
  (``/v1.0/healthz``, ``/v1.0/healthz/outbound``); anything else gets 503 and the connection is
  closed. One warning says when the cap is reached, one line when it is left.
* The process must never run out of file descriptors: with uvloop (libuv) an accept that fails
  for want of one makes it accept and drop every waiting connection, health probes included. So
  beyond a ceiling a few descriptors short of the open-file limit, a new connection closes the
  oldest turned-away connection still sending its headers (or, if there is none, is itself
  answered 503 at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from dataclasses import dataclass
from typing import Any

from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("pillion.http")

HEALTH_PATHS = frozenset({"/v1.0/healthz", "/v1.0/healthz/outbound"})
# A connection beyond the cap has this long to send its request: probes send theirs at once.
OVERFLOW_HEADER_TIMEOUT = 2.0
# Descriptors the default cap leaves for backends, files and the connections turned away.
RESERVED_DESCRIPTORS = 512
# Descriptors kept for backends and files even while connections are being turned away.
KEPT_DESCRIPTORS = 64
_REFUSED_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
)
_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    read_header_timeout: float = 10.0
    read_body_timeout: float = 60.0
    # None: derived from the open-file limit (default_max_connections).
    max_connections: int | None = None

    def resolved_max_connections(self) -> int:
        return self.max_connections or default_max_connections()


def _open_file_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def default_max_connections() -> int:
    return max(16, _open_file_limit() - RESERVED_DESCRIPTORS)


def raise_open_file_limit() -> None:
    """Lift the soft open-file limit to the hard one, as Go programs (daprd) do at start."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):  # a sandbox may refuse: the soft limit stays
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _too_many_connections(scope: Scope, receive: Receive, send: Send) -> None:
    body = b"too many connections; try again shortly\n"
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class CoalescedWrites(asyncio.Transport):
    """A connection's transport whose writes within one turn of the event loop go out as one.

    uvicorn writes a response's head and its body separately, and on an idle socket uvloop sends
    each write at once: two ``send`` calls per answer, about a fifth of the CPU of a small request.
    So a write is held until the next one, which sends both (the head and a whole body leave
    together, without waiting), or until the end of the loop turn; a large write, ``close`` and
    ``write_eof`` send what is held first.
    """

    _FLUSH_AT = 64 * 1024

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._size = 0
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._pending.append(bytes(data))
        self._size += len(data)
        if len(self._pending) > 1 or self._size >= self._FLUSH_AT:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_later)

    def _flush_later(self) -> None:
        self._scheduled = False
        self._flush()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._size = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._size = 0
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()


class _CapState:
    """The cap, the descriptor ceiling, and the connections beyond the cap, oldest first."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.ceiling = max(cap + 16, _open_file_limit() - KEPT_DESCRIPTORS)
        self.holding = False  # so that reaching and leaving the cap are said once each
        self.turned_away = 0
        self.overflow: dict[asyncio.Protocol, None] = {}


def protocol_class(limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with these limits, for ``uvicorn.Config(http=...)``."""
    state = _CapState(limits.resolved_max_connections())

    class LimitedProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._deadline: asyncio.TimerHandle | None = None
            self._header_timeout = limits.read_header_timeout
            self._request_started = False
            self._headers_done = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.transport = CoalescedWrites(transport, self.loop)
            if len(self.connections) > state.cap:
                self._over_cap()
                if len(self.connections) > state.ceiling and not self._make_room():
                    transport.write(_REFUSED_RESPONSE)
                    transport.close()
                    return
                state.overflow[self] = None
            self._arm(self._header_timeout, "request headers")

        def _make_room(self) -> bool:
            """Close the oldest turned-away connection still sending its headers, if any."""
            for other in state.overflow:
                if isinstance(other, LimitedProtocol) and not other._headers_done:
                    del state.overflow[other]
                    other._disarm()
                    other.transport.close()
                    return True
            return False

        def _over_cap(self) -> None:
            if not state.holding:
                state.holding = True
                log.warning(
                    "connection cap reached: %d connections are open (--http-max-connections %d); "
                    "new connections get 503, health probes are still answered",
                    len(self.connections) - 1,
                    state.cap,
                )
            state.turned_away += 1
            self._header_timeout = min(self._header_timeout, OVERFLOW_HEADER_TIMEOUT)
            served = self.app

            async def health_only(scope: Scope, receive: Receive, send: Send) -> None:
                path = scope.get("path", "").rstrip("/")
                await (served if path in HEALTH_PATHS else _too_many_connections)(scope, receive, send)

            self.app = health_only

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            state.overflow.pop(self, None)
            super().connection_lost(exc)
            if state.holding and len(self.connections) < state.cap:
                state.holding = False
                log.warning(
                    "connections below the cap again (%d open); %d were turned away meanwhile",
                    len(self.connections),
                    state.turned_away,
                )
                state.turned_away = 0

        def _unsupported_upgrade_warning(self) -> None:
            # uvicorn's own advice here is to install a WebSocket library: the API has no use
            # for one, and the request is served as the plain HTTP request it also is.
            log.debug("an upgrade to another protocol was asked for; the API serves HTTP only")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._request_started = True
            if self._deadline is None:  # a further request on a kept-alive connection
                self._arm(self._header_timeout, "request headers")

        def on_headers_complete(self) -> None:
            self._disarm()
            self._headers_done = True
            super().on_headers_complete()
            self._arm(limits.read_body_timeout, "request body")

        def on_message_complete(self) -> None:
            self._disarm()
            self._request_started = self._headers_done = False
            super().on_message_complete()

        def _arm(self, seconds: float, what: str) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._expired, seconds, what)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self, seconds: float, what: str) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            log.debug("closing the connection of %s: %s not received within %gs", client, what, seconds)
            cycle = self.cycle  # the request's, or the one before it while headers are awaited
            if self._request_started and (
                cycle is None or cycle.response_complete or not cycle.response_started
            ):
                self.transport.write(_TIMEOUT_RESPONSE)
            self.transport.close()

    return LimitedProtocol

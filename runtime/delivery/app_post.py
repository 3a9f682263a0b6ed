"""Event deliveries to the app: HTTP/1.1 POSTs over kept-alive connections, one write each.

Delivery is the per-message hot path, and aiohttp's client builds a request object, a payload
object, a timeout handle and a response object for every call (about a third of the sidecar's CPU
per delivered message here). Deliveries need one thing from HTTP: POST bytes with a few headers
and read the status and body back. This module does that on asyncio protocols with httptools'
response parser (uvicorn's parser, so nothing new is installed): an idle connection is reused, a
request is written with one ``write``, and a connection that was cut, timed out or left half-read
is never reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import cast

import httptools

# Characters a request line cannot carry as they are (an app's route is sent as it declared it).
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")


class AppConnectionRefused(OSError):
    """The app's port refused the connection: nothing was sent."""


class AppCallError(Exception):
    """The request went out but no whole answer came back."""


class _Connection(asyncio.Protocol):
    """One kept-alive connection to the app; serves one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[tuple[int, bytes]] | None = None
        self._body: list[bytes] = []
        self._status = 0
        # A body with neither Content-Length nor chunked encoding ends with the connection.
        self._until_close = False
        self._framed = False
        self.reusable = True
        self.closed = False

    # --- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._answer is None:
            self._drop()  # an answer to no request: this connection cannot be trusted any more
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish(error=AppCallError(f"unreadable answer from the app: {exc}"))
            self._drop()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self._answer is not None and not self._answer.done():
            if self._until_close and self._status:
                self._finish()
            else:
                reason = f": {exc}" if exc else ""
                self._finish(error=AppCallError(f"the app closed the connection before answering{reason}"))

    # --- httptools callbacks --------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-length" or (lowered == b"transfer-encoding" and b"chunked" in value.lower()):
            self._framed = True

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._until_close = not self._framed and self._status not in (204, 304)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if not self._parser.should_keep_alive():
            self.reusable = False
        self._finish()

    # --- requests -------------------------------------------------------------------------------

    def request(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self._transport is not None
        self._answer = self._loop.create_future()
        self._body = []
        self._status = 0
        self._framed = self._until_close = False
        self._transport.write(data)
        return self._answer

    def _finish(self, error: Exception | None = None) -> None:
        answer, self._answer = self._answer, None
        if answer is None or answer.done():
            return
        if error is not None:
            answer.set_exception(error)
        else:
            answer.set_result((self._status, b"".join(self._body)))

    def _drop(self) -> None:
        self.reusable = False
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        self._drop()


class AppPoster:
    """POSTs to one app at ``host:port``, reusing idle connections (no limit on how many)."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._host_header = (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()
        self._idle: list[_Connection] = []

    async def post(
        self, path: str, body: bytes, headers: dict[str, bytes], time_limit: float | None
    ) -> tuple[int, bytes]:
        """Status and body of the answer. ``AppConnectionRefused`` when no connection could be
        opened; ``AppCallError`` or ``TimeoutError`` when the request went out unanswered."""
        target = _UNSAFE.sub(lambda found: f"%{ord(found.group()):02X}", path).encode()
        head = [b"POST ", target, b" HTTP/1.1\r\nhost: ", self._host_header]
        for name, value in headers.items():
            head += (b"\r\n", name.encode("latin-1"), b": ", value)
        head += (b"\r\ncontent-length: ", str(len(body)).encode(), b"\r\n\r\n", body)
        data = b"".join(head)
        async with asyncio.timeout(time_limit):
            connection = await self._connection()
            try:
                answer = await connection.request(data)
            except BaseException:
                connection.close()  # a late answer would be read as the next request's
                raise
        if connection.reusable and not connection.closed:
            self._idle.append(connection)
        else:
            connection.close()
        return answer

    async def _connection(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(lambda: _Connection(loop), self._host, self._port)
        except OSError as exc:
            raise AppConnectionRefused(
                exc.errno, f"cannot connect to the app at {self._host}:{self._port}: {exc}"
            ) from None
        return connection

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            with contextlib.suppress(Exception):
                connection.close()

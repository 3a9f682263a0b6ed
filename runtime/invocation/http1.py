"""HTTP/1.1 client connections for service invocation: the hop to another sidecar, and to the app.

aiohttp's client, used here before, builds a request object, a payload, a timer, a cookie filter
and a response object for every call: about a quarter of each sidecar's CPU per invocation. An
invocation needs little of HTTP: send a verb, a target, headers and a body; read back a status,
headers and a body; keep the connection for the next call. This module does that on an asyncio
protocol with httptools' response parser (uvicorn's, so nothing new is installed):

* a request with a whole body is one write; a streamed body is written as it comes, under the
  transport's flow control (with the caller's ``Content-Length`` when it gave one, else chunked);
* an answer whose declared length is at most ``whole_limit`` is read whole; any other is handed
  over once its headers are in and streamed, reading paused while the consumer lags behind;
* a connection is pooled again only after its answer was read to the end; one that was cut, left
  half-read, or answered a HEAD (the parser cannot be told to expect no body) is closed;
* a pooled connection that the server closed while it sat idle shows when it is used: the request
  goes out once more on a new connection, if nothing of the answer came back and its body can be
  sent again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import cast

import httptools

Headers = list[tuple[str, str]]
# A request line cannot carry these as they are: spaces, controls and non-ASCII bytes are escaped.
_UNSAFE = re.compile(rb"[\x00-\x20\x7f-\xff]")
# Idle connections older than this are not reused by default: the server may be closing them
# (uvicorn and Node keep an idle connection 5 s; the race is also caught by the one retry).
DEFAULT_IDLE_LIMIT = 4.0
_CONNECT_TIMEOUT = 5.0
# A streamed answer stops being read while this much waits for its consumer.
_HIGH_WATER = 256 * 1024
_NO_BODY_STATUS = frozenset({204, 304})
_SET_BY_CLIENT = frozenset({"content-length", "transfer-encoding", "host"})


class ConnectError(OSError):
    """No connection could be opened (refused, timed out, TLS handshake failed): nothing was sent."""


class AnswerError(Exception):
    """The request went out, or part of it did, and no whole answer came back."""


class _Stale(AnswerError):
    """A reused connection was found closed before any of the answer came back."""


@dataclass(slots=True)
class Answer:
    status: int
    headers: Headers
    # The whole body when it was read at once; else None and ``body`` streams it.
    content: bytes | None
    body: AsyncIterator[bytes]

    async def release(self) -> None:
        """Stop reading the body (a streamed body's connection is closed, not reused)."""
        await cast(AsyncGenerator[bytes, None] | _Streamed, self.body).aclose()


async def _just(content: bytes) -> AsyncIterator[bytes]:
    yield content


class _Streamed:
    """A streamed body: its connection is pooled again once it was read to the end, and closed
    when the reader stops before (or never starts)."""

    def __init__(self, pool: ConnectionPool, connection: _Connection, chunks: AsyncIterator[bytes]) -> None:
        self._pool = pool
        self._connection = connection
        self._chunks = chunks
        self._finished = False

    def __aiter__(self) -> _Streamed:
        return self

    async def __anext__(self) -> bytes:
        if self._finished:
            raise StopAsyncIteration
        try:
            return await anext(self._chunks)
        except StopAsyncIteration:
            self._finished = True
            self._pool.put(self._connection)
            raise
        except BaseException:
            self._finished = True
            self._connection.abort()
            raise

    async def aclose(self) -> None:
        if not self._finished:
            self._finished = True
            self._connection.abort()
            await cast(AsyncGenerator[bytes, None], self._chunks).aclose()


class _Connection(asyncio.Protocol):
    """One kept-alive connection; serves one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reusable = True
        self.idle_since = 0.0
        self._writable: asyncio.Future[None] | None = None
        # The request in flight.
        self._answer: asyncio.Future[Answer] | None = None
        self._head_request = False
        self._whole_limit = 0
        self._status = 0
        self._headers: Headers = []
        self._length: int | None = None
        self._chunked = False
        self._informational = False
        self._streaming = False
        self._complete = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._wake: asyncio.Future[None] | None = None
        self._error: Exception | None = None
        self._received = False

    # --- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._answer is None and not self._streaming:
            self.abort()  # an answer to no request: this connection cannot be trusted any more
            return
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(AnswerError(f"unreadable answer: {exc}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_exception(AnswerError("the connection was closed while the request was sent"))
        framed = self._length is not None or self._chunked
        if self._status and not framed and not self._complete and not self._head_request:
            self._completed()  # a body without length or chunks ends with the connection
            return
        reason = f": {exc}" if exc else ""
        if not self._received:
            self._fail(_Stale(f"the connection was closed before an answer came{reason}"))
        else:
            self._fail(AnswerError(f"the connection was closed in the middle of the answer{reason}"))

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    # --- httptools callbacks --------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1")
        text = value.decode("latin-1")
        lowered = key.lower()
        if lowered == "content-length" and text.isdigit():
            self._length = int(text)
        elif lowered == "transfer-encoding" and "chunked" in text.lower():
            self._chunked = True
        self._headers.append((key, text))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        self._status = status
        if 100 <= status < 200 and status != 101:
            self._informational = True  # 100 Continue and the like: the real answer follows
            return
        if self._head_request:
            # The parser would wait for the body the headers describe: hand over and close.
            self.reusable = False
            self._resolve(b"")
            self._complete = True
            self.abort()
            return
        whole = status in _NO_BODY_STATUS or (self._length is not None and self._length <= self._whole_limit)
        if not whole:
            self._streaming = True
            self._resolve(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._streaming:
            self._wakeup()
            if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            self._status, self._headers, self._length, self._chunked = 0, [], None, False
            return
        if not self._parser.should_keep_alive():
            self.reusable = False
        self._completed()

    # --- one request ----------------------------------------------------------------------------

    def begin(self, head_request: bool, whole_limit: int) -> asyncio.Future[Answer]:
        self._answer = self._loop.create_future()
        self._head_request = head_request
        self._whole_limit = whole_limit
        self._status, self._headers, self._length, self._chunked = 0, [], None, False
        self._informational = self._streaming = self._complete = self._received = False
        self._chunks.clear()
        self._buffered = 0
        self._error = None
        return self._answer

    async def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise AnswerError("the connection was closed while the request was sent")
        self.transport.write(data)
        if self._writable is not None:
            await self._writable

    def _completed(self) -> None:
        self._complete = True
        if self._streaming:
            self._wakeup()
        else:
            self._resolve(b"".join(self._chunks))
            self._chunks.clear()

    def _resolve(self, content: bytes | None) -> None:
        answer, self._answer = self._answer, None
        if answer is None or answer.done():
            return
        body = _just(content) if content is not None else self._stream()
        answer.set_result(Answer(self._status, self._headers, content, body))

    def _fail(self, error: Exception) -> None:
        self._error = error
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_exception(error)
        self._wakeup()

    def _wakeup(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _stream(self) -> AsyncIterator[bytes]:
        try:
            while True:
                while self._chunks:
                    chunk = self._chunks.popleft()
                    self._buffered -= len(chunk)
                    if self._paused and self._buffered <= _HIGH_WATER // 2 and self.transport is not None:
                        self._paused = False
                        self.transport.resume_reading()
                    yield chunk
                if self._complete:
                    break
                if self._error is not None:
                    raise self._error
                self._wake = self._loop.create_future()
                await self._wake
        finally:
            self._streaming = False
            if not self._complete:
                self.abort()  # left half-read: the rest would be read as the next answer

    def abort(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()


class ConnectionPool:
    """Connections to one ``host:port`` (over TLS with ``ssl_context``), reused while idle."""

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        idle_limit: float = DEFAULT_IDLE_LIMIT,
    ) -> None:
        self.host, self.port = host, port
        self._ssl = ssl_context
        self._idle_limit = idle_limit
        self._host_header = (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()
        self._idle: list[_Connection] = []

    async def request(
        self,
        verb: str,
        target: str,
        headers: Headers,
        body: bytes | AsyncIterator[bytes] | None,
        whole_limit: int,
        check: Callable[[asyncio.Transport], None] | None = None,
    ) -> Answer:
        """The answer's status and headers, and its body whole or as a stream.

        ``ConnectError`` when no connection could be opened, ``AnswerError`` when no whole answer
        came back; ``check`` may refuse a connection (raising) before anything is sent on it.
        """
        streamed = body is not None and not isinstance(body, bytes)
        head = self._head(verb, target, headers, body, streamed)
        for attempt in range(2):
            connection, reused = await self._connection()
            try:
                if check is not None:
                    assert connection.transport is not None
                    check(connection.transport)
                answer = connection.begin(verb == "HEAD", whole_limit)
                if isinstance(body, bytes) or body is None:
                    await connection.write(head + body if body else head)
                else:
                    await connection.write(head)
                    await self._send_stream(connection, body, chunked=b"\r\ntransfer-encoding:" in head)
                found = await answer
            except _Stale:
                connection.abort()
                if reused and not streamed and attempt == 0:
                    continue
                raise AnswerError("the connection was closed before an answer came") from None
            except BaseException:
                connection.abort()  # a late answer would be read as the next request's
                raise
            if found.content is not None:
                self.put(connection)
            else:
                found.body = _Streamed(self, connection, found.body)
            return found
        raise AssertionError("unreachable")  # pragma: no cover

    def _head(
        self,
        verb: str,
        target: str,
        headers: Headers,
        body: bytes | AsyncIterator[bytes] | None,
        streamed: bool,
    ) -> bytes:
        path = _UNSAFE.sub(lambda found: b"%%%02X" % found.group()[0], target.encode("utf-8"))
        lines = [verb.encode("latin-1"), b" ", path, b" HTTP/1.1\r\nhost: ", self._host_header]
        declared = b""
        for name, value in headers:
            if name.lower() in _SET_BY_CLIENT:
                if name.lower() == "content-length":
                    declared = value.strip().encode("latin-1")
                continue
            lines += (b"\r\n", name.encode("latin-1"), b": ", value.encode("latin-1"))
        if isinstance(body, bytes):
            lines += (b"\r\ncontent-length: ", str(len(body)).encode())
        elif streamed:
            # The caller's length is kept (the app may rely on it); without one, chunks.
            if declared.isdigit():
                lines += (b"\r\ncontent-length: ", declared)
            else:
                lines.append(b"\r\ntransfer-encoding: chunked")
        elif verb in ("POST", "PUT", "PATCH"):
            lines.append(b"\r\ncontent-length: 0")
        lines.append(b"\r\n\r\n")
        return b"".join(lines)

    @staticmethod
    async def _send_stream(connection: _Connection, body: AsyncIterator[bytes], chunked: bool) -> None:
        async for chunk in body:
            if not chunk:
                continue
            if chunked:
                await connection.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            else:
                await connection.write(chunk)
        if chunked:
            await connection.write(b"0\r\n\r\n")

    def put(self, connection: _Connection) -> None:
        if connection.reusable and not connection.closed:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.abort()

    async def _connection(self) -> tuple[_Connection, bool]:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < self._idle_limit:
                return connection, True
            connection.abort()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop), self.host, self.port, ssl=self._ssl
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            reason = str(exc) or f"no connection within {_CONNECT_TIMEOUT:g}s"
            raise ConnectError(f"cannot connect to {self.host}:{self.port}: {reason}") from None
        return connection, False

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            with contextlib.suppress(Exception):
                connection.abort()

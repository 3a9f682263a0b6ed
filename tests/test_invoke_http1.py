"""The invocation hop's HTTP/1.1 client (runtime/invocation/http1.py) against servers that answer
in the ways a real app or proxy may: a kept-alive connection closed while idle, 100 Continue
before the answer, HEAD with a length, a body that ends with the connection, a large chunked
body read slowly, a reader that stops half-way. Each server is a real socket on a free port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from runtime.invocation.http1 import AnswerError, ConnectError, ConnectionPool
from tests.support import free_port

pytestmark = pytest.mark.anyio

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


@asynccontextmanager
async def _serving(serve: Serve) -> AsyncIterator[tuple[ConnectionPool, list[bool]]]:
    """A pool to a server running ``serve`` on each connection (closed when it returns); the list
    grows per connection accepted, True for one the client closed under a write."""
    accepted: list[bool] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(accepted)
        accepted.append(False)
        try:
            await serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            accepted[index] = True
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    pool = ConnectionPool("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        yield pool, accepted
    finally:
        pool.close()
        server.close()
        await server.wait_closed()


async def _get(pool: ConnectionPool, verb: str = "GET") -> tuple[int, bytes]:
    answer = await pool.request(verb, "/x", [], None, 1024)
    body = answer.content
    if body is None:
        body = b"".join([chunk async for chunk in answer.body])
    return answer.status, body


async def test_a_kept_alive_connection_closed_as_it_is_reused_is_replaced_without_an_error() -> None:
    async def once_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)  # kept alive as far as the client knows
        await writer.drain()
        # The next request meets a server that is closing the connection: no answer, no error
        # for the caller, the request goes out again on a new connection.
        await reader.readuntil(b"\r\n\r\n")

    async with _serving(once_then_close) as (pool, accepted):
        assert await _get(pool) == (200, b"ok")
        assert await _get(pool, "POST") == (200, b"ok")
        assert await _get(pool) == (200, b"ok")
    assert len(accepted) == 3  # the stale one, its replacement, and the replacement's replacement


async def test_100_continue_comes_before_the_answer() -> None:
    async def continuing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
        await writer.drain()

    async with _serving(continuing) as (pool, _):
        assert await _get(pool) == (200, b"ok")


async def test_head_gets_the_headers_of_a_body_it_does_not_get() -> None:
    async def head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-app: 1\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.5)  # a client waiting for 5 bytes would hang here

    async with _serving(head) as (pool, _):
        answer = await asyncio.wait_for(pool.request("HEAD", "/x", [], None, 1024), 0.4)
    assert answer.status == 200 and answer.content == b""
    assert ("content-length", "5") in answer.headers and ("x-app", "1") in answer.headers


async def test_a_body_without_length_ends_with_the_connection() -> None:
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nfirst,")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"second")
        await writer.drain()
        writer.close()

    async with _serving(until_close) as (pool, _):
        assert await _get(pool) == (200, b"first,second")


async def test_a_large_chunked_body_read_slowly_arrives_whole_and_the_connection_is_reused() -> None:
    block = bytes(range(256)) * 256  # 64 KiB a chunk, 8 MiB in all: past the high-water mark

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for _ in range(128):
                writer.write(b"%x\r\n%b\r\n" % (len(block), block))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    async with _serving(chunked) as (pool, accepted):
        for _ in range(2):
            answer = await pool.request("GET", "/x", [], None, 1024)
            assert answer.content is None
            size = 0
            async for chunk in answer.body:
                size += len(chunk)
                await asyncio.sleep(0)  # a consumer slower than the socket
            assert size == 128 * len(block)
    assert len(accepted) == 1


async def test_a_reader_that_stops_half_way_closes_the_connection() -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"4\r\ndata\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)

    async with _serving(endless) as (pool, accepted):
        answer = await pool.request("GET", "/x", [], None, 1024)
        assert await anext(answer.body) == b"data"
        await answer.release()
        for _ in range(50):
            if accepted[0]:
                break
            await asyncio.sleep(0.02)
        assert accepted == [True]  # closed, so it cannot be reused half-read


async def test_an_answer_cut_off_is_an_error_and_a_closed_port_a_connect_error() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await writer.drain()
        writer.close()

    async with _serving(cut) as (pool, _):
        with pytest.raises(AnswerError, match="in the middle of the answer"):
            await pool.request("GET", "/x", [], None, 1024)
    with pytest.raises(ConnectError, match=r"cannot connect to 127\.0\.0\.1"):
        await ConnectionPool("127.0.0.1", free_port()).request("GET", "/x", [], None, 1024)


async def test_a_streamed_request_body_keeps_the_callers_length_or_goes_chunked() -> None:
    heads: list[bytes] = []
    bodies: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            head = await reader.readuntil(b"\r\n\r\n")
            heads.append(head)
            if b"content-length: 6" in head:
                bodies.append(await reader.readexactly(6))
            else:
                bodies.append(await reader.readuntil(b"0\r\n\r\n"))
            writer.write(OK)
            await writer.drain()

    async def parts() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"def"

    async with _serving(record) as (pool, _):
        await pool.request("PUT", "/with length", [("Content-Length", "6")], parts(), 1024)
        await pool.request("PUT", "/chunked", [], parts(), 1024)
    assert heads[0].startswith(b"PUT /with%20length HTTP/1.1\r\n")
    assert bodies == [b"abcdef", b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"]
    assert b"transfer-encoding: chunked" in heads[1]

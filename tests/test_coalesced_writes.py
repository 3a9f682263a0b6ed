"""The API connections' write gathering (runtime/http/connections.py ``CoalescedWrites``): a head
and the body after it leave in one piece and in order, a lone write leaves at the end of the loop
turn, nothing written is lost on close, a large body is not held back, and an abort drops what
was held. Real sockets."""

from __future__ import annotations

import asyncio

import pytest

from runtime.http.connections import CoalescedWrites

pytestmark = pytest.mark.anyio


async def _pair() -> tuple[CoalescedWrites, asyncio.StreamReader, asyncio.AbstractServer]:
    accepted: asyncio.Future[asyncio.StreamReader] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(reader)
        await asyncio.sleep(5)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(
        asyncio.Protocol, "127.0.0.1", server.sockets[0].getsockname()[1]
    )
    return CoalescedWrites(transport, loop), await accepted, server


async def test_a_head_and_its_body_leave_together_and_close_sends_what_is_held() -> None:
    writes, reader, server = await _pair()
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
    writes.write(head)
    assert writes.get_write_buffer_size() == len(head)  # held for the next write
    writes.write(b"ok")  # which sends both at once
    first = await asyncio.wait_for(reader.read(1000), 2)
    assert first == head + b"ok"
    writes.write(b"alone")  # no second write: it leaves at the end of the loop turn
    assert await asyncio.wait_for(reader.read(1000), 2) == b"alone"
    writes.write(b"last words")
    writes.close()
    assert await asyncio.wait_for(reader.read(), 2) == b"last words"
    server.close()


async def test_a_large_body_is_not_held_and_abort_drops_what_was_gathered() -> None:
    writes, reader, server = await _pair()
    writes.write(b"x" * (CoalescedWrites._FLUSH_AT + 1))
    assert await asyncio.wait_for(reader.readexactly(CoalescedWrites._FLUSH_AT + 1), 2)
    writes.write(b"never sent")
    writes.abort()
    try:
        rest = await asyncio.wait_for(reader.read(), 2)
    except ConnectionResetError:  # an abort may reach the peer as a reset
        rest = b""
    assert rest == b""
    server.close()

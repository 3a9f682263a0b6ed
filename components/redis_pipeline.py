"""One pipelined Redis connection for the hot commands of the Redis components.

redis-py's asyncio client takes a pooled connection per command, wraps the command in its own
timeout and retry layers and waits for the reply before the connection serves anyone else; at a
few thousand requests a second that costs more CPU than the request around it. Here every
command is written to one connection as it comes, the commands issued in the same event-loop
turn (16 concurrent requests, say) leave in one write, and the replies (RESP2, parsed by hiredis)
settle the callers' futures in order. Redis answers pipelined commands in the order it got them,
so nothing has to wait for a reply before the next command is sent.

* Deadlines: one timer per connection, not one per command: when the oldest unanswered command
  has waited ``readTimeout``, the connection is dropped and every command on it fails.
* Cancellation: a caller that stops waiting leaves its reply to be read and dropped, so the
  connection never loses its place in the stream of replies.
* Failures: a command whose connection broke (or timed out) is sent again on a new connection,
  with the component's ``redisMaxRetries`` and back-off, as redis-py's retry does.
* Blocking commands (``XREADGROUP BLOCK``) never come here: they would hold up everything behind.

Plain TCP only: with TLS or Sentinel the components use redis-py for every command (see
:func:`for_settings`).
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from components.redis_common import RedisSettings

Arg = bytes | str | int | float


# hiredis' stub types the argument as a 1-tuple: called through a typed alias.
_pack_command = cast("Callable[[tuple[Arg, ...]], bytes]", hiredis.pack_command)


def pack(args: tuple[Arg, ...]) -> bytes:
    """A command in RESP (an array of bulk strings), packed by hiredis in C."""
    return _pack_command(args)


class _Connection(asyncio.Protocol):
    """One socket to Redis: commands out in turn-sized batches, replies back in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float | None, where: str) -> None:
        self._loop = loop
        self._read_timeout = read_timeout
        self._where = where
        self._parser = hiredis.Reader(replyError=ResponseError)
        # Each unanswered command: its caller's future and when it was sent (loop time).
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._out: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self.closed = False

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        parser.feed(data)
        waiting = self._waiting
        while True:
            reply = parser.gets()
            if reply is False:
                return
            if not waiting:
                self._fail(RedisConnectionError(f"Redis at {self._where} sent a reply nobody asked for"))
                return
            future = waiting.popleft()[0]
            if not future.done():  # a caller that gave up leaves its reply to be dropped
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(
            RedisConnectionError(f"connection to Redis at {self._where} lost" + (f": {exc}" if exc else ""))
        )

    # --- commands ----------------------------------------------------------------------------

    def send(self, command: bytes) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self._loop.create_future()
        if self.closed:
            future.set_exception(RedisConnectionError(f"connection to Redis at {self._where} closed"))
            return future
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(command)
        self._waiting.append((future, self._loop.time()))
        return future

    def _flush(self) -> None:
        if self.closed or not self._out or self._transport is None:
            return
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        self._transport.write(data)
        if self._watchdog is None and self._read_timeout is not None:
            self._watchdog = self._loop.call_at(self._waiting[0][1] + self._read_timeout, self._check)

    def _check(self) -> None:
        self._watchdog = None
        if not self._waiting or self._read_timeout is None:
            return
        due = self._waiting[0][1] + self._read_timeout
        if due <= self._loop.time():
            self._fail(
                RedisTimeoutError(f"Redis at {self._where} did not answer within {self._read_timeout:g}s")
            )
        else:
            self._watchdog = self._loop.call_at(due, self._check)

    def _fail(self, error: Exception) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._transport is not None:
            self._transport.abort()
        waiting, self._waiting = self._waiting, deque()
        self._out.clear()
        for future, _ in waiting:
            if not future.done():
                future.set_exception(error)

    def close(self) -> None:
        self._fail(RedisConnectionError(f"connection to Redis at {self._where} closed"))


class RedisPipeline:
    """Send commands to one Redis node over one pipelined connection, opened on first use."""

    def __init__(self, settings: RedisSettings, client_name: str | None = None) -> None:
        self._settings = settings
        self._client_name = client_name
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._closed = False

    async def execute(self, *args: Arg) -> Any:
        """Run one command; its reply as hiredis gives it (bytes, int, list, None).

        ``ResponseError`` for an error reply; ``redis.exceptions.ConnectionError`` or
        ``TimeoutError`` once the retries are spent.
        """
        command = pack(args)
        retries = max(0, self._settings.max_retries)
        attempt = 0
        while True:
            try:
                connection = self._connection
                if connection is None or connection.closed:
                    connection = await self._connect()
                reply = await connection.send(command)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if self._closed or attempt >= retries:
                    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
                        raise
                    raise RedisConnectionError(
                        f"cannot reach Redis at {self._settings.address}: {exc}"
                    ) from exc
                attempt += 1
                await asyncio.sleep(self._backoff(attempt))
                continue
            if isinstance(reply, ResponseError):
                raise reply
            return reply

    def _backoff(self, attempt: int) -> float:
        settings = self._settings
        ceiling = min(settings.max_retry_interval, settings.min_retry_interval * 2**attempt)
        return random.uniform(settings.min_retry_interval, max(settings.min_retry_interval, ceiling))

    async def _connect(self) -> _Connection:
        if self._closed:
            raise RedisConnectionError(f"the client of Redis at {self._settings.address} is closed")
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
            self._connecting.add_done_callback(self._connected)
        # Shielded: one caller giving up must not abort the connection the others wait for.
        return await asyncio.shield(self._connecting)

    def _connected(self, attempt: asyncio.Future[_Connection]) -> None:
        self._connecting = None
        if not attempt.cancelled() and attempt.exception() is None:
            self._connection = attempt.result()
        elif not attempt.cancelled():
            attempt.exception()  # retrieved: the callers see it through the shield

    async def _open(self) -> _Connection:
        settings = self._settings
        loop = asyncio.get_running_loop()
        where = settings.address
        handshake: list[tuple[Arg, ...]] = []
        if settings.password:
            login = (settings.username, settings.password) if settings.username else (settings.password,)
            handshake.append(("AUTH", *login))
        if settings.db:
            handshake.append(("SELECT", settings.db))
        if self._client_name:
            handshake.append(("CLIENT", "SETNAME", self._client_name))
        connection: _Connection | None = None
        try:
            async with asyncio.timeout(settings.dial_timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop, settings.read_timeout, where), settings.host, settings.port
                )
                replies = await asyncio.gather(*(connection.send(pack(c)) for c in handshake))
        except TimeoutError:
            if connection is not None:
                connection.close()
            raise RedisTimeoutError(f"connecting to Redis at {where} timed out") from None
        except OSError as exc:
            raise RedisConnectionError(f"Error connecting to Redis at {where}: {exc}") from None
        for reply in replies:
            if isinstance(reply, ResponseError):
                connection.close()
                raise reply
        if self._closed:
            connection.close()
            raise RedisConnectionError(f"the client of Redis at {where} is closed")
        return connection

    async def aclose(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def for_settings(settings: RedisSettings, client_name: str | None = None) -> RedisPipeline | None:
    """A pipelined connection where it can serve (plain TCP to one node), else None."""
    if settings.tls or settings.sentinel_master:
        return None
    return RedisPipeline(settings, client_name)

"""A server that accepts TCP connections and never says a word: the backend that hangs clients."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class SilentServer:
    """Listens on a free loopback port; counts the connections its clients still hold open."""

    def __init__(self) -> None:
        self.port = 0
        self._open: set[asyncio.StreamWriter] = set()
        self.accepted = 0

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def start(self) -> None:
        server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        self._server = server
        self.port = server.sockets[0].getsockname()[1]

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._open.add(writer)
        try:
            while await reader.read(65536):  # whatever the client says, no answer
                pass
        except OSError:
            pass
        finally:
            self._open.discard(writer)
            writer.close()

    async def stop(self) -> None:
        self._server.close()
        for writer in list(self._open):
            writer.close()


@contextmanager
def silent_port() -> Iterator[int]:
    """A silent listener for another process (a sidecar) to connect to, served from a thread."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()
        for conn in held:
            conn.close()

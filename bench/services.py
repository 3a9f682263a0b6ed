"""The backends the benchmarks need, each private to the run and gone afterwards.

* Redis: ``REDIS_URL`` when set, else a private ``redis-server`` on a free port.
* PostgreSQL: a new database on ``PILLION_POSTGRES_URL``'s server (default: the local one at
  127.0.0.1:5432), dropped afterwards.
* NATS JetStream: ``NATS_URL`` (default ``nats://127.0.0.1:4222``); each run makes streams with
  unique names and deletes them afterwards.

A backend is started on first use; one that cannot be had raises :class:`BenchError` with how
to get it, so only the sections that need it fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import asyncpg
import redis

from bench.common import BenchError, need
from tests.postgres_support import HOW_TO_GET_POSTGRES, private_database, server_url
from tests.support import free_port

HOW_TO_GET_NATS = (
    "NATS with JetStream is needed: install nats-server (Debian/Ubuntu: `apt-get install "
    "nats-server`) and run `nats-server -js`, or set NATS_URL to a server with JetStream on."
)


@contextlib.contextmanager
def private_redis(workdir: Path) -> Iterator[str]:
    """A redis-server on a free port, with no persistence, for the length of the block."""
    port = free_port()
    settings = ["--bind", "127.0.0.1", "--dir", str(workdir), "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(
        [need("redis-server"), "--port", str(port), *settings],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    try:
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise BenchError(f"the private redis-server on port {port} did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


class Services:
    def __init__(self, workdir: Path, stack: ExitStack) -> None:
        self.workdir = workdir
        self.stack = stack
        self._found: dict[str, str | BenchError] = {}

    def _once(self, name: str, get: Callable[[], str]) -> str:
        """Each backend is tried once per run; a failure is remembered and raised again."""
        if name not in self._found:
            try:
                self._found[name] = get()
            except BenchError as exc:
                self._found[name] = exc
        found = self._found[name]
        if isinstance(found, BenchError):
            raise found
        return found

    def redis_url(self) -> str:
        return self._once("redis", self._redis)

    def postgres_url(self) -> str:
        return self._once("postgres", self._postgres)

    def nats_url(self) -> str:
        return self._once("nats", self._nats)

    def _redis(self) -> str:
        from_env = os.environ.get("REDIS_URL")
        if from_env:
            try:
                redis.Redis.from_url(from_env).ping()
            except redis.RedisError as exc:
                raise BenchError(f"REDIS_URL={from_env} cannot be reached: {exc}") from None
            return from_env
        folder = self.workdir / "redis"
        folder.mkdir()
        return self.stack.enter_context(private_redis(folder))

    def _postgres(self) -> str:
        server = server_url()
        try:
            return self.stack.enter_context(private_database(server))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise BenchError(f"PostgreSQL at {server}: {exc}. {HOW_TO_GET_POSTGRES}") from None

    def _nats(self) -> str:
        url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
        try:
            import nats  # noqa: F401 (pubsub.jetstream's client: there, or nothing to measure)
        except ImportError:
            raise BenchError("nats-py is not installed: .venv/bin/pip install -e '.[dev]'") from None

        errors: list[Exception] = []

        async def quietly(exc: Exception) -> None:
            errors.append(exc)

        async def probe() -> None:
            import nats

            # nats-py keeps trying a server that refuses: the timeout is what ends the attempt.
            async with asyncio.timeout(5):
                client = await nats.connect(url, connect_timeout=2, allow_reconnect=False, error_cb=quietly)
                try:
                    await client.jetstream().account_info()
                finally:
                    await client.close()

        try:
            asyncio.run(probe())
        except Exception as exc:
            problem = errors[-1] if errors and isinstance(exc, TimeoutError) else exc
            raise BenchError(
                f"NATS at {url}: {problem or type(problem).__name__}. {HOW_TO_GET_NATS}"
            ) from None
        return url

    @contextlib.contextmanager
    def jetstream_subjects(self) -> Iterator[str]:
        """A subject prefix (``bench<hex>.``) held by a stream of its own, deleted afterwards."""
        url = self.nats_url()
        token = uuid.uuid4().hex[:12]
        prefix, stream = f"bench{token}.", f"PILLION_BENCH_{token}"

        async def create() -> None:
            import nats

            client = await nats.connect(url)
            try:
                await client.jetstream().add_stream(name=stream, subjects=[prefix + ">"])
            finally:
                await client.close()

        async def delete() -> None:
            import nats

            client = await nats.connect(url)
            try:
                await client.jetstream().delete_stream(stream)
            finally:
                await client.close()

        asyncio.run(create())
        try:
            yield prefix
        finally:
            asyncio.run(delete())

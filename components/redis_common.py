"""Connecting to Redis with Dapr's connection metadata, for every Redis-backed component.

The field names, defaults and readings are those of components-contrib's shared Redis settings, so a
Dapr ``state.redis`` or ``pubsub.redis`` resource connects the same way here. Durations take Go
duration strings ("500ms", "3s") and bare numbers as milliseconds, as Dapr reads them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff

from components.metadata import FieldType, MetadataError, MetadataField, MetadataSchema

DEFAULT_PORT = 6379
SENTINEL_PORT = 26379
# Extra socket time granted to a command that blocks on the server (XREADGROUP BLOCK), so the
# client does not give up on a reply that is merely on its way.
_BLOCKING_SLACK_SECONDS = 2.0

CONNECTION_FIELDS = MetadataSchema(
    (
        MetadataField(
            "redisHost",
            required=True,
            description="Address of the Redis server, `host:port` (the port defaults to `redisPort`, "
            "then 6379). With `failover`: the sentinels, comma-separated (the port defaults to 26379).",
        ),
        MetadataField(
            "redisPort", FieldType.INTEGER, description="Port, when `redisHost` does not name one."
        ),
        MetadataField("redisUsername", default="", description="ACL user name (Redis 6+)."),
        MetadataField("redisPassword", default="", sensitive=True, description="Password for AUTH."),
        MetadataField("redisDB", FieldType.INTEGER, default=0, description="Database number to SELECT."),
        MetadataField(
            "redisType",
            default="node",
            choices=("node", "cluster"),
            description="`node` (a single server). `cluster` is not supported yet and stops start-up.",
        ),
        MetadataField(
            "failover",
            FieldType.BOOLEAN,
            default=False,
            description="Redis Sentinel: ask the sentinels in `redisHost` for the address of the master "
            "`sentinelMasterName`, and again after a failover. Not with `enableTLS` yet.",
        ),
        MetadataField(
            "sentinelMasterName", default="", description="With `failover`: the master's name in Sentinel."
        ),
        MetadataField(
            "sentinelUsername", default="", description="With `failover`: ACL user name for the sentinels."
        ),
        MetadataField(
            "sentinelPassword",
            default="",
            sensitive=True,
            description="With `failover`: password for the sentinels (`redisPassword` is the master's).",
        ),
        MetadataField("enableTLS", FieldType.BOOLEAN, default=False, description="Connect over TLS."),
        MetadataField(
            "insecureSkipTLSVerify",
            FieldType.BOOLEAN,
            default=False,
            description="With TLS: accept any server certificate (for testing only).",
        ),
        MetadataField(
            "clientCert", default="", description="PEM text of a TLS client certificate (with `clientKey`)."
        ),
        MetadataField(
            "clientKey", default="", sensitive=True, description="PEM text of the TLS client private key."
        ),
        MetadataField(
            "redisMaxRetries",
            FieldType.INTEGER,
            default=3,
            aliases=("maxRetries",),
            description="Retries of a command after a connection error or timeout; -1 disables them.",
        ),
        MetadataField(
            "redisMinRetryInterval",
            FieldType.DURATION,
            default=0.008,
            bare_unit_seconds=0.001,
            description="Smallest back-off between retries.",
        ),
        MetadataField(
            "redisMaxRetryInterval",
            FieldType.DURATION,
            default=0.512,
            bare_unit_seconds=0.001,
            aliases=("maxRetryBackoff",),
            description="Largest back-off between retries.",
        ),
        MetadataField(
            "dialTimeout",
            FieldType.DURATION,
            default=5.0,
            bare_unit_seconds=0.001,
            description="Timeout for opening a connection.",
        ),
        MetadataField(
            "readTimeout",
            FieldType.DURATION,
            default=3.0,
            bare_unit_seconds=0.001,
            description="Timeout for a reply; -1 waits forever. Pub/sub blocks this long per stream read.",
        ),
        MetadataField(
            "poolSize",
            FieldType.INTEGER,
            description="Most connections open at once (default: 10 per CPU, as go-redis).",
        ),
        MetadataField(
            "poolTimeout",
            FieldType.DURATION,
            bare_unit_seconds=0.001,
            description="How long a command waits for a free pooled connection (default: readTimeout + 1s).",
        ),
    )
)


@dataclass(frozen=True, slots=True)
class RedisSettings:
    host: str
    port: int
    username: str
    password: str
    db: int
    tls: bool
    tls_skip_verify: bool
    client_cert: str
    client_key: str
    max_retries: int
    min_retry_interval: float
    max_retry_interval: float
    dial_timeout: float
    # None: no read timeout (Dapr's -1).
    read_timeout: float | None
    pool_size: int
    pool_timeout: float
    # Sentinel (failover: true): the master's name and the sentinels that know its address; host and
    # port are then unused.
    sentinel_master: str = ""
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_username: str = ""
    sentinel_password: str = ""

    @property
    def address(self) -> str:
        if self.sentinel_master:
            sentinels = ",".join(_join_host(host, port) for host, port in self.sentinels)
            return f"master {self.sentinel_master!r} of sentinels {sentinels}"
        return _join_host(self.host, self.port)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> RedisSettings:
        """Read the values ``CONNECTION_FIELDS.parse`` produced; raises MetadataError on conflicts."""
        if metadata["redisType"] == "cluster":
            raise MetadataError("redisType", "Redis Cluster is not supported yet; use a single node")
        sentinel_master = str(metadata["sentinelMasterName"]).strip() if metadata["failover"] else ""
        sentinels: tuple[tuple[str, int], ...] = ()
        if metadata["failover"]:
            if not sentinel_master:
                raise MetadataError("sentinelMasterName", "is required with failover: true")
            if metadata["enableTLS"]:
                raise MetadataError("enableTLS", "TLS with Redis Sentinel is not supported yet")
            addresses = str(metadata["redisHost"]).split(",")
            sentinels = tuple(_split_host(a.strip(), None, SENTINEL_PORT) for a in addresses)
            host, port = "", 0
        else:
            host, port = _split_host(str(metadata["redisHost"]).strip(), metadata["redisPort"])
        cert, key = str(metadata["clientCert"]), str(metadata["clientKey"])
        if bool(cert) != bool(key):
            raise MetadataError("clientCert" if key else "clientKey", "clientCert and clientKey go together")
        if cert and not metadata["enableTLS"]:
            raise MetadataError("clientCert", "a client certificate needs enableTLS: true")
        read_timeout: float | None = metadata["readTimeout"]
        if read_timeout is not None and read_timeout <= 0:
            read_timeout = None
        pool_size = metadata["poolSize"] or 10 * (os.cpu_count() or 1)
        if pool_size < 1:
            raise MetadataError("poolSize", "must be at least 1")
        pool_timeout = metadata["poolTimeout"]
        if pool_timeout is None:
            pool_timeout = (read_timeout or 3.0) + 1.0
        return cls(
            host=host,
            port=port,
            username=str(metadata["redisUsername"]),
            password=str(metadata["redisPassword"]),
            db=int(metadata["redisDB"]),
            tls=bool(metadata["enableTLS"]),
            tls_skip_verify=bool(metadata["insecureSkipTLSVerify"]),
            client_cert=cert,
            client_key=key,
            max_retries=int(metadata["redisMaxRetries"]),
            min_retry_interval=max(0.0, float(metadata["redisMinRetryInterval"])),
            max_retry_interval=max(0.0, float(metadata["redisMaxRetryInterval"])),
            dial_timeout=float(metadata["dialTimeout"]),
            read_timeout=read_timeout,
            pool_size=pool_size,
            pool_timeout=float(pool_timeout),
            sentinel_master=sentinel_master,
            sentinels=sentinels,
            sentinel_username=str(metadata["sentinelUsername"]),
            sentinel_password=str(metadata["sentinelPassword"]),
        )


def _join_host(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split_host(text: str, port: int | None, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Split ``host:port`` the way Go's net.SplitHostPort does, taking ``port`` when none is named."""
    if not text:
        raise MetadataError("redisHost", "is required")
    if "," in text:
        raise MetadataError(
            "redisHost",
            "a list of addresses needs failover: true (Sentinel); Redis Cluster is not supported yet",
        )
    named: str | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise MetadataError("redisHost", f"{text!r} is not a valid address")
        named = rest[1:] or None
    elif text.count(":") == 1:
        host, _, named = text.partition(":")
    else:
        host = text  # no port, or a bare IPv6 address
    if named is None:
        return host, port or default_port
    if not named.isdigit():
        raise MetadataError("redisHost", f"port {named!r} is not a number")
    if port and port != int(named):
        raise MetadataError(
            "redisPort", f"redisHost names port {named} but redisPort is {port}; give the port once"
        )
    return host, int(named)


def build_client(
    settings: RedisSettings, *, blocking_for: float | None = None, client_name: str | None = None
) -> Redis:
    """A client for ``settings`` (bytes in, bytes out).

    ``blocking_for`` (seconds) builds a client for commands that wait on the server that long
    (``XREADGROUP BLOCK``): its read timeout leaves room for the wait, and its pool has no size cap,
    so long-waiting readers never hold up ordinary commands on the main pool. ``client_name`` is
    set on each connection (``CLIENT SETNAME``), so it can be found in ``CLIENT LIST``.
    """
    socket_timeout = settings.read_timeout
    if blocking_for is not None and socket_timeout is not None:
        socket_timeout = max(socket_timeout, blocking_for) + _BLOCKING_SLACK_SECONDS
    if settings.max_retries < 0:
        retry = Retry(NoBackoff(), 0)
    else:
        backoff = ExponentialWithJitterBackoff(
            cap=settings.max_retry_interval, base=settings.min_retry_interval
        )
        retry = Retry(backoff, settings.max_retries)
    connection: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "db": settings.db,
        "username": settings.username or None,
        "password": settings.password or None,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": settings.dial_timeout,
        "retry": retry,
        "client_name": client_name,
    }
    folder: Path | None = None
    if settings.tls:
        connection["connection_class"] = SSLConnection
        if settings.tls_skip_verify:
            connection["ssl_cert_reqs"] = "none"
            connection["ssl_check_hostname"] = False
        if settings.client_cert:
            # Python's ssl module loads a client certificate only from files, and redis-py loads it
            # again for each new connection: keep private copies for as long as the client lives.
            folder = Path(tempfile.mkdtemp(prefix="pillion-redis-tls-"))
            for name, text in (("ssl_certfile", settings.client_cert), ("ssl_keyfile", settings.client_key)):
                path = folder / name
                path.touch(mode=0o600)
                path.write_text(text)
                connection[name] = str(path)
    pool: ConnectionPool
    if settings.sentinel_master:
        client = _sentinel_client(settings, connection, bounded=blocking_for is None)
    else:
        if blocking_for is None:
            pool = BlockingConnectionPool(
                max_connections=settings.pool_size, timeout=settings.pool_timeout, **connection
            )
        else:
            pool = ConnectionPool(**connection)
        client = Redis.from_pool(pool)
    if folder is not None:
        weakref.finalize(client, shutil.rmtree, folder, ignore_errors=True)
    return client


def _sentinel_client(settings: RedisSettings, connection: dict[str, Any], *, bounded: bool) -> Redis:
    """A client of the master the sentinels name: each new connection asks them where it is."""
    connection = {k: v for k, v in connection.items() if k not in ("host", "port")}
    options: dict[str, Any] = {
        "username": settings.sentinel_username or None,
        "password": settings.sentinel_password or None,
        "socket_timeout": settings.dial_timeout,
        "socket_connect_timeout": settings.dial_timeout,
        # The component's retries, not redis-py's default of several seconds of back-off.
        "retry": connection["retry"],
    }
    sentinel = _new_sentinel(settings.sentinels, sentinel_kwargs=options)
    # redis-py names each sentinel by its client's full repr in "no master found" errors.
    sentinel.sentinels = [_SentinelNode(host=host, port=port, **options) for host, port in settings.sentinels]
    pool: ConnectionPool
    if bounded:
        pool = _new_blocking_sentinel_pool(
            settings.sentinel_master,
            sentinel,
            max_connections=settings.pool_size,
            timeout=settings.pool_timeout,
            **connection,
        )
    else:
        pool = _new_sentinel_pool(settings.sentinel_master, sentinel, **connection)
    return _SentinelClient(sentinel, pool)


class _SentinelBlockingConnectionPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's master lookup with the bounded, waiting pool ordinary commands use: each new
    connection asks the sentinels where the master is, and connections to a demoted master are
    dropped, so the pool follows a failover."""


class _SentinelNode(Redis):
    """The connection to one sentinel, named by its address in error messages."""

    def __repr__(self) -> str:
        options = self.connection_pool.connection_kwargs
        return f"sentinel {_join_host(options['host'], options['port'])}"


class _SentinelClient(Redis):
    """A client that owns its pool (as with ``Redis.from_pool``) and its connections to the
    sentinels, and closes both."""

    def __init__(self, sentinel_manager: Sentinel, pool: ConnectionPool) -> None:
        super().__init__(connection_pool=pool)
        self.auto_close_connection_pool = True
        self.sentinel_manager = sentinel_manager

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        await self.sentinel_manager.aclose()


# redis-py types some of these constructors and not others, and which ones changes between its
# releases (8.2 typed ``Sentinel.__init__``). Calling them through typed aliases keeps
# ``mypy --strict`` passing on either side of such a change, with no ``type: ignore`` to go stale.
_new_sentinel = cast("Callable[..., Sentinel]", Sentinel)
_new_sentinel_pool = cast("Callable[..., SentinelConnectionPool]", SentinelConnectionPool)
_new_blocking_sentinel_pool = cast(
    "Callable[..., _SentinelBlockingConnectionPool]", _SentinelBlockingConnectionPool
)

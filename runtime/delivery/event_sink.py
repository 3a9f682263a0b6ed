"""What receives events from the delivery loop (``runtime.delivery.handler``), and how a try ends.

:class:`EventSink` is all the delivery loop needs from a receiver: the HTTP app
(``runtime.delivery.app_channel``), a gRPC app (``runtime.grpc.app_channel``) or a streaming subscriber on
the gRPC API (``runtime.grpc.streaming``). Retries, dead letters and concurrency stay in the
delivery loop, the same for all three. This module imports no network client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from runtime.delivery.app_health import AppHealth
    from runtime.delivery.subscriptions import Subscription

log = logging.getLogger("pillion.app")
_PROBE_INTERVAL = 0.1


class AppUnreachable(Exception):
    """The app's port refused the connection: nothing was delivered."""


class AppCallFailed(Exception):
    """The call reached the app but no answer came back (timeout, reset connection, ...)."""


class Outcome(Enum):
    SUCCESS = "SUCCESS"
    RETRY = "RETRY"
    DROP = "DROP"


@dataclass(frozen=True, slots=True)
class Answer:
    """What became of one try: the outcome, the HTTP status (or its equivalent; 0 when there was
    no answer) for the span, and why the app did not accept it (for the log)."""

    outcome: Outcome
    status: int
    reason: str = ""


@dataclass(slots=True)
class Envelope:
    """One event on its way to the receiver."""

    pubsub: str
    topic: str
    path: str
    event: dict[str, Any]
    body: bytes
    # Message metadata, trace context and content type, as HTTP header names and values.
    headers: dict[str, bytes]


class EventSink(Protocol):
    async def deliver(self, envelope: Envelope, time_limit: float | None) -> Answer:
        """One try. ``AppUnreachable`` when nothing was sent (no try used up); any other exception
        is a failed try."""

    async def wait_reachable(self) -> None:
        """Return once a delivery could be sent again."""


class AppConnection(EventSink, Protocol):
    """A channel to the app, over HTTP or gRPC (``--app-protocol``)."""

    health: AppHealth | None

    async def programmatic_subscriptions(self) -> list[Subscription]:
        """The app's own subscriptions (``AppCallFailed``, ``SubscriptionError``)."""

    async def aclose(self) -> None: ...


async def wait_for_port(address: str, port: int) -> None:
    """Return once ``address:port`` accepts a TCP connection."""
    log.warning("app is not reachable on %s:%d; deliveries wait for it", address, port)
    while True:
        try:
            _, writer = await asyncio.open_connection(address, port)
        except OSError:
            await asyncio.sleep(_PROBE_INTERVAL)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        log.info("app is reachable again on %s:%d", address, port)
        return

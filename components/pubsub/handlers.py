"""What the brokers share about handing messages to the app: how many at once, and the handler
tasks in flight."""

from __future__ import annotations

import asyncio
from typing import Any

from components.metadata import FieldType, MetadataField

CONCURRENCY_FIELD = MetadataField(
    "concurrency",
    FieldType.INTEGER,
    default=10,
    description="Messages handed to the app at once per subscription (a subscription's own "
    "`concurrency` metadata overrides it); 1 keeps order.",
)


async def wait_for_handlers(handlers: set[asyncio.Task[Any]]) -> None:
    """Wait for the handlers in flight to finish. If the caller gives up waiting (cancels), the
    handlers are cancelled too, so that each gives its message back to the broker."""
    try:
        if handlers:
            await asyncio.wait(handlers)
    except asyncio.CancelledError:
        for task in handlers:
            task.cancel()
        raise

"""A background sweep that runs every so often and survives its own failures."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable


async def sweep_forever(
    sweep: Callable[[], Awaitable[int | None]], every: float, what: str, log: logging.Logger
) -> None:
    """Call ``sweep`` (which returns how many items it removed) every ``every`` seconds."""
    while True:
        try:
            removed = await sweep()
            if removed:
                log.debug("deleted %d %s", removed, what)
        except Exception as exc:  # a failed sweep must not end the task
            log.warning("deleting %s failed: %s", what, exc)
        await asyncio.sleep(every)

"""Deadlines on the component life cycle and on the process itself.

A backend that accepts a connection and then says nothing must not hold the sidecar: a
component's ``init`` and ``close`` run under a deadline, and when the process is asked to stop a
last-resort timer ends it should anything (a library that swallows cancellation, a thread stuck
in a blocking call) still hold it after a bounded time.

``asyncio.wait_for`` is not enough for the first: on timeout it cancels the operation and then
waits, without limit, for it to end, so an operation that ignores its cancellation hangs the
caller all the same. :func:`within` waits a short grace instead and then leaves it, loudly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

log = logging.getLogger("pillion")
T = TypeVar("T")

# How long a cancelled operation may take to wind down before it is left behind.
CANCEL_GRACE = 2.0
# How long one component may take to close.
CLOSE_TIMEOUT = 5.0
# What a stop may take beyond the drain of deliveries: the HTTP server's graceful shutdown (5 s)
# plus the components' closes, with room to spare.
STOP_SLACK = 15.0


class Closable(Protocol):
    async def close(self) -> None: ...


async def within(operation: Coroutine[Any, Any, T], seconds: float, what: str) -> T:
    """``operation``'s result if it ends within ``seconds``, else ``TimeoutError``.

    On timeout, or when the caller is cancelled, the operation is cancelled and given
    ``CANCEL_GRACE`` seconds to end; one that does not is logged (``what`` names it) and left.
    """
    task = asyncio.ensure_future(operation)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        await _cancel(task, what)
        raise
    if done:
        return task.result()
    await _cancel(task, what)
    raise TimeoutError(f"{what} did not finish within {seconds:g}s")


async def _cancel(task: asyncio.Future[Any], what: str) -> None:
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=CANCEL_GRACE)
    if not done:
        log.error("%s ignored its cancellation for %gs; it is left running", what, CANCEL_GRACE)
    # Its outcome no longer matters; reading it keeps asyncio from reporting it as unread.
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


async def close_component(name: str, component: Closable, seconds: float = CLOSE_TIMEOUT) -> None:
    """Close a component within ``seconds``; a failure or a timeout is a warning, never raised."""
    try:
        await within(component.close(), seconds, f"closing component {name}")
    except Exception as exc:
        log.warning("closing component %s failed: %s", name, exc or type(exc).__name__)


def exit_after(seconds: float, reason: str, code: int = 1) -> threading.Timer:
    """End the process ``seconds`` from now unless it ended by itself: the last resort of a stop.

    ``reason`` says what the process was asked to do, for the log line that precedes the exit.
    """
    timer = threading.Timer(seconds, _exit_now, args=(seconds, reason, code))
    timer.daemon = True
    timer.name = "pillion-exit-deadline"
    timer.start()
    return timer


def _exit_now(seconds: float, reason: str, code: int) -> None:
    log.error(
        "still running %gs after %s (something would not stop): exiting now with code %d",
        seconds,
        reason,
        code,
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(code)

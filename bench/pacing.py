"""Open-loop load at a fixed rate from asyncio, shared by the load generator and the direct
(no-Pillion) baselines so that both sides of a pair are paced the same way.

Each worker owns one connection and sends every ``workers / rate`` seconds, as ``hey -q`` does; the
workers' schedules are staggered so the total is an even stream rather than bursts. A worker that
falls behind sends at once but does not catch up with a burst.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

# ``send(worker)`` sends one message on worker ``worker``'s connection and returns when it is done.
Send = Callable[[int], Awaitable[None]]


async def at_fixed_rate(rate: float, workers: int, seconds: float, send: Send) -> list[int]:
    """Send at ``rate`` per second in all for ``seconds``; return each send's duration in ns."""
    interval = workers / rate
    start = time.monotonic() + 0.05
    stop = start + seconds
    durations: list[int] = []

    async def worker(index: int) -> None:
        due = start + interval * index / workers
        while due < stop:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            began = time.monotonic_ns()
            await send(index)
            durations.append(time.monotonic_ns() - began)
            due = max(due + interval, time.monotonic())

    await asyncio.gather(*(worker(i) for i in range(workers)))
    return durations

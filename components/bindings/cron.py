"""``bindings.cron``: an input binding that fires on a schedule.

Schedules read as Dapr's cron binding reads them: five fields (minute hour day month weekday), or
six with seconds first; ``@yearly``/``@annually``, ``@monthly``, ``@weekly``, ``@daily``/``@midnight``,
``@hourly``; ``@every <Go duration>`` (the next run is the previous one plus the duration); an
optional ``TZ=<zone> `` or ``CRON_TZ=<zone> `` prefix (default: the machine's local time).

Each tick is an event with no data and the metadata ``timeZone`` and ``readTimeUTC``. The app's
answer is ignored, as daprd ignores it; a slow answer does not delay the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime, tzinfo
from typing import Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from components.base import ComponentContext
from components.bindings.base import INPUT, EventHandler, InputEvent
from components.metadata import MetadataError, MetadataField, MetadataSchema, parse_duration

log = logging.getLogger("pillion.bindings.cron")
_DESCRIPTORS = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})


def go_time_text(moment: datetime) -> str:
    """A UTC moment as Go's ``time.Time.String()`` writes it (trailing zeros of the fraction dropped)."""
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    return f"{text}{'.' + fraction if fraction else ''} +0000 UTC"


class Schedule:
    """When the next tick is due, for one schedule text."""

    def __init__(self, text: str) -> None:
        spec = text.strip()
        self.zone: tzinfo | None = None
        for prefix in ("TZ=", "CRON_TZ="):
            if spec.startswith(prefix):
                name, _, spec = spec[len(prefix) :].partition(" ")
                try:
                    self.zone = ZoneInfo(name)
                except (ZoneInfoNotFoundError, ValueError):
                    raise ValueError(f"provided bad location {name}") from None
                spec = spec.strip()
        self.every: float | None = None
        self._expression = ""
        self._seconds_first = False
        if spec.startswith("@every "):
            self.every = parse_duration(spec[len("@every ") :])
            if self.every <= 0:
                raise ValueError("@every needs a positive duration")
        elif spec in _DESCRIPTORS:
            self._expression = spec
        else:
            fields = spec.split()
            if len(fields) not in (5, 6):
                raise ValueError(f"expected 5 or 6 fields, found {len(fields)}: {spec}")
            self._seconds_first = len(fields) == 6
            if not croniter.is_valid(spec, second_at_beginning=self._seconds_first):
                raise ValueError(f"cannot read {spec!r} as a cron expression")
            self._expression = spec

    def after(self, moment: datetime) -> datetime:
        if self.every is not None:
            return datetime.fromtimestamp(moment.timestamp() + self.every, UTC)
        start = moment.astimezone(self.zone) if self.zone is not None else moment.astimezone()
        found: datetime = croniter(self._expression, start, second_at_beginning=self._seconds_first).get_next(
            datetime
        )
        return found


class CronBinding:
    """Input binding firing on a cron schedule (seconds and `@every` supported)."""

    schema: ClassVar[MetadataSchema] = MetadataSchema(
        (
            MetadataField(
                "schedule",
                required=True,
                description="When to fire: `*/15 * * * * *` (with seconds), `0 30 9 * * MON-FRI`, "
                "`@hourly`, `@every 15s`, optionally after `TZ=Europe/Paris `.",
            ),
        )
    )
    directions: ClassVar[frozenset[str]] = frozenset({INPUT})

    def __init__(self, metadata: dict[str, Any], context: ComponentContext) -> None:
        text: str = metadata["schedule"]
        try:
            self._schedule = Schedule(text)
        except ValueError as exc:
            raise MetadataError("schedule", f"invalid schedule format '{text}': {exc}") from None
        self._name = context.name
        self._ticker: asyncio.Task[None] | None = None
        self._runs: set[asyncio.Task[None]] = set()

    async def init(self) -> None:
        return None

    async def close(self) -> None:
        await self.stop_reading()

    async def ping(self) -> None:
        return None

    async def read(self, handler: EventHandler) -> None:
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick_forever(handler))

    async def stop_reading(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        for run in list(self._runs):
            run.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)

    async def _tick_forever(self, handler: EventHandler) -> None:
        due = self._schedule.after(datetime.now(UTC))
        while True:
            await asyncio.sleep(max(0.0, due.timestamp() - time.time()))
            run = asyncio.create_task(self._fire(handler))
            self._runs.add(run)
            run.add_done_callback(self._runs.discard)
            # A tick that came late (a suspended machine) is not repeated: the next is after now.
            due = self._schedule.after(max(due, datetime.now(UTC)))

    async def _fire(self, handler: EventHandler) -> None:
        metadata = {"timeZone": "Local", "readTimeUTC": go_time_text(datetime.now(UTC))}
        try:
            await handler(InputEvent(b"", metadata))
        except Exception as exc:
            log.debug("cron binding %s: the app did not take the tick: %s", self._name, exc)

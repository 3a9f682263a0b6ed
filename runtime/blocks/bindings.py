"""The bindings building block: output operations the app invokes, and input events from
components delivered to the app at ``/<route>``.

It knows components only through ``components.bindings.base`` and the app only through the app
channel. Input follows daprd: after the app is reachable each input binding is offered to the app
with ``OPTIONS /<route>`` (2xx or 405: it takes them; 404 or anything else: it does not), unless the
component's ``direction`` names ``input`` explicitly; then each event is a ``POST /<route>`` with
the payload as body and the event metadata as headers, and only a 2xx answer accepts it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from components.bindings.base import (
    INPUT,
    OUTPUT,
    BindingError,
    InputEvent,
    InvokeRequest,
    InvokeResponse,
)
from components.bindings.http_util import canonical_header
from runtime import errors
from runtime.blocks.base import BlockContext, ComponentProblem, LoadedComponent
from runtime.errors import APIError

if TYPE_CHECKING:
    from runtime.delivery.app_channel import AppChannel

log = logging.getLogger("pillion.bindings")
# daprd's --app-binding-options-timeout default.
PROBE_TIMEOUT = 3.0
# How long the app may take over one event before it counts as refused.
DELIVERY_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class BindingEntry:
    name: str
    binding: Any
    directions: frozenset[str]
    # False when the component names `input` in `direction`: the app is not asked first.
    probe: bool
    route: str


class OutputBindingFailed(Exception):
    """``ERR_INVOKE_OUTPUT_BINDING`` and the metadata the component still returned, which daprd
    sends along (as ``metadata.<key>`` headers over HTTP)."""

    def __init__(self, name: str, problem: str, metadata: dict[str, str] | None = None) -> None:
        super().__init__(problem)
        self.error: APIError = errors.output_binding_failed(name, problem)
        self.metadata = metadata or {}


def parse_directions(text: str, supported: frozenset[str]) -> tuple[frozenset[str], bool]:
    """The directions a component is used in, and whether ``input`` was named explicitly."""
    if not text.strip():
        return supported, False
    named = frozenset(part.strip().lower() for part in text.split(",") if part.strip())
    unknown = named - {INPUT, OUTPUT}
    if unknown:
        raise ValueError(f"direction {', '.join(sorted(unknown))!r} is not input or output")
    missing = named - supported
    if missing:
        raise ValueError(f"this binding type has no {', '.join(sorted(missing))} direction")
    return named, INPUT in named


class BindingsBlock:
    kind: ClassVar[str] = "bindings"

    def __init__(self, app_id: str) -> None:
        self._app_id = app_id
        self._entries: dict[str, BindingEntry] = {}
        self._channel: AppChannel | None = None
        # Input bindings currently handing events to the app, by name.
        self._reading: dict[str, BindingEntry] = {}
        self._changes: set[asyncio.Task[None]] = set()

    # --- the component life cycle (runtime.blocks.base.BuildingBlock, runtime.blocks.hooks.AppFacing) --

    @classmethod
    def create(cls, context: BlockContext) -> BindingsBlock:
        return cls(context.app_id)

    def build(self, component: LoadedComponent) -> BindingEntry:
        instance: Any = component.instance
        try:
            directions, explicit_input = parse_directions(
                str(component.metadata["direction"]), instance.directions
            )
        except ValueError as exc:
            raise ComponentProblem(str(exc)) from None
        name = component.resource.name
        route = str(component.metadata["route"] or name)
        return BindingEntry(name, instance, directions, not explicit_input, "/" + route.lstrip("/"))

    def capabilities(self, entry: BindingEntry) -> list[str]:
        return []

    def install(self, name: str, entry: BindingEntry | None) -> None:
        if entry is None:
            self._entries.pop(name, None)
            if name in self._reading:
                self._change(self._stop_one(name))
            return
        self._entries[name] = entry
        if self._channel is not None:
            self._change(self._restart(name))

    async def app_ready(self, channel: AppChannel) -> None:
        if self._channel is not None:
            return
        self._channel = channel
        for entry in list(self._entries.values()):
            if INPUT in entry.directions and not await self._start(entry):
                log.warning("failed to read from bindings: the remaining input bindings are not started")
                return

    async def stop(self) -> None:
        for task in list(self._changes):
            task.cancel()
        await asyncio.gather(*self._changes, return_exceptions=True)
        for name in list(self._reading):
            await self._stop_one(name)
        self._channel = None

    # --- input --------------------------------------------------------------------------------

    def _change(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._changes.add(task)
        task.add_done_callback(self._changes.discard)

    async def _restart(self, name: str) -> None:
        if name in self._reading:
            await self._stop_one(name)
        entry = self._entries.get(name)
        if entry is not None and INPUT in entry.directions:
            await self._start(entry)

    async def _stop_one(self, name: str) -> None:
        entry = self._reading.pop(name, None)
        if entry is None:
            return
        try:
            await entry.binding.stop_reading()
        except Exception as exc:
            log.warning("stopping input binding %s failed: %s", name, exc)

    async def _start(self, entry: BindingEntry) -> bool:
        """Offer the binding to the app and start reading; False when the app could not be asked."""
        channel = self._channel
        assert channel is not None
        if entry.probe:
            try:
                reply = await channel.options(entry.route, PROBE_TIMEOUT)
            except Exception as exc:
                log.warning("input binding %s: OPTIONS %s failed: %s", entry.name, entry.route, exc)
                return False
            if not (200 <= reply.status <= 299 or reply.status == 405):
                log.info(
                    "app has not subscribed to binding %s (OPTIONS %s: %d)",
                    entry.name,
                    entry.route,
                    reply.status,
                )
                return True

        async def deliver(event: InputEvent) -> bytes:
            return await self._deliver(channel, entry, event)

        try:
            await entry.binding.read(deliver)
        except Exception as exc:
            log.error("input binding %s cannot read: %s", entry.name, exc)
            return True
        self._reading[entry.name] = entry
        log.info("input binding %s delivers to %s", entry.name, entry.route)
        return True

    @staticmethod
    async def _deliver(channel: AppChannel, entry: BindingEntry, event: InputEvent) -> bytes:
        headers = {canonical_header(k): v.encode() for k, v in event.metadata.items() if _header_safe(k, v)}
        headers["content-type"] = b"application/json"
        reply = await channel.post(entry.route, event.data, headers, DELIVERY_TIMEOUT)
        if not 200 <= reply.status <= 299:
            body = reply.body[:200].decode("utf-8", "replace")
            raise RuntimeError(
                f"fails to send binding event to http app channel, status code: {reply.status} body: {body}"
            )
        return reply.body

    # --- output -------------------------------------------------------------------------------

    async def invoke(
        self, name: str, data: bytes, metadata: dict[str, str], operation: str
    ) -> InvokeResponse | None:
        """Run an output operation; None when the component had no answer at all (HTTP 204)."""
        if not operation:
            raise OutputBindingFailed(name, "operation field is missing from request")
        entry = self._entries.get(name)
        if entry is None or OUTPUT not in entry.directions:
            raise OutputBindingFailed(name, f"couldn't find output binding {name}")
        operations: tuple[str, ...] = entry.binding.operations
        if operation not in operations:
            supported = " ".join(operations)
            raise OutputBindingFailed(
                name,
                f"binding {name} does not support operation {operation}. supported operations:{supported}",
            )
        try:
            response: InvokeResponse = await entry.binding.invoke(InvokeRequest(data, metadata, operation))
        except BindingError as exc:
            extra = exc.response.metadata if exc.response is not None else None
            raise OutputBindingFailed(name, str(exc), extra) from None
        except Exception as exc:
            log.warning("output binding %s failed: %s", name, exc)
            raise OutputBindingFailed(name, str(exc) or type(exc).__name__) from None
        if response.data is None and not response.metadata:
            return None
        return response


def _header_safe(name: str, value: str) -> bool:
    return not any(c in name + value for c in "\r\n\0") and bool(name)

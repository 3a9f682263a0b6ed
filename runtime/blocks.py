"""The small surface through which the newer building blocks (lock, bindings, configuration) plug
into the sidecar's component life cycle and hot reload.

A block is told of each of its components as it starts (``entry``, then ``put``), of each that is
removed (``remove``), when the app becomes reachable (``app_ready``) and when the sidecar stops
(``stop``). It keeps what it needs per component and knows neither transports nor concrete
components.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from runtime.app_channel import AppChannel
    from runtime.resources import ComponentResource


class PluggableBlock(Protocol):
    def entry(self, resource: ComponentResource, instance: Any, metadata: dict[str, Any]) -> Any:
        """What the block keeps for a started component; ``ValueError`` when the runtime-level
        metadata (``keyPrefix``, ``direction``...) cannot be used."""
        ...

    def put(self, name: str, entry: Any) -> None:
        """Use ``entry`` for ``name`` from now on (a new component, or a changed one)."""
        ...

    def remove(self, name: str) -> None: ...

    async def app_ready(self, channel: AppChannel | None) -> None:
        """The app is reachable (``channel`` is None without ``--app-port``)."""
        ...

    async def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class PluggedEntry:
    """An entry on its way to its block (hot reload applies it after every component started)."""

    block: str
    value: Any

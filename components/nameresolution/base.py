"""The name-resolution Protocol: how a sidecar announces itself and finds the sidecars of an app id.

Addresses are ``host:port`` of a sidecar's internal (sidecar-to-sidecar) port, never an app port.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from components.base import ComponentContext
from components.metadata import MetadataSchema


@dataclass(frozen=True, slots=True)
class Instance:
    """This sidecar, as it registers itself."""

    app_id: str
    namespace: str
    host: str
    internal_port: int
    http_port: int
    app_port: int | None = None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.internal_port}"


class NameResolver(Protocol):
    schema: ClassVar[MetadataSchema]

    def __init__(self, metadata: dict[str, Any], context: ComponentContext) -> None: ...

    async def init(self) -> None:
        """Open the registry (file, connection). Raising stops the sidecar at start-up."""

    async def register(self, instance: Instance) -> None:
        """Announce ``instance`` and keep the announcement fresh until :meth:`close`."""

    async def resolve(self, app_id: str, namespace: str) -> list[str]:
        """Every live address of ``app_id`` (empty when none); the caller picks one."""
        ...

    async def close(self) -> None:
        """Withdraw the registration and release the registry."""

    async def ping(self) -> None:
        """Raise when the registry cannot be reached."""

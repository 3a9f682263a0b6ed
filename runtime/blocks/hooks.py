"""What a building block that talks to the app is told besides its components' life cycle."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from runtime.delivery.app_channel import AppChannel


@runtime_checkable
class AppFacing(Protocol):
    async def app_ready(self, channel: AppChannel) -> None:
        """The app's port answers (and, with health checks, the app is healthy): input bindings
        ask the app and start delivering."""
        ...

    async def stop(self) -> None:
        """The sidecar stops: deliveries to the app end before the components close."""
        ...

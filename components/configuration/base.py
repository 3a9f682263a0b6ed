"""What configuration stores implement: read items, and report changes to subscribed keys."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from components.base import Component


@dataclass(slots=True)
class ConfigurationItem:
    value: str = ""
    version: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """daprd's JSON: empty fields are left out (a deleted key is ``{}``)."""
        out: dict[str, object] = {}
        if self.value:
            out["value"] = self.value
        if self.version:
            out["version"] = self.version
        if self.metadata:
            out["metadata"] = self.metadata
        return out


# Called with the items of one change, in the order the store reported them.
UpdateHandler = Callable[[dict[str, ConfigurationItem]], Awaitable[None]]


class Watch(Protocol):
    async def close(self) -> None:
        """Stop reporting changes; no call to the handler starts after it returned."""
        ...


class ConfigurationStore(Component, Protocol):
    async def get(self, keys: list[str], metadata: dict[str, str]) -> dict[str, ConfigurationItem]:
        """The items of ``keys`` that exist (every item when ``keys`` is empty)."""
        ...

    async def subscribe(self, keys: list[str], metadata: dict[str, str], handler: UpdateHandler) -> Watch:
        """Report each change of ``keys`` (every key when empty) to ``handler`` until closed."""
        ...

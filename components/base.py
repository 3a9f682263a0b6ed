"""What every component shares: how it is built and what it is told about its surroundings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from components.metadata import MetadataSchema


@dataclass(frozen=True, slots=True)
class ComponentContext:
    """Facts from the runtime that a component may need at construction time."""

    name: str
    app_id: str
    data_dir: Path
    # Folder of the resource file, so relative paths in metadata resolve against it.
    resource_dir: Path
    # Where the embedded stores shared by every app live (~/.pillion, or --data-dir).
    shared_dir: Path = field(default_factory=lambda: Path.home() / ".pillion")


class Component(Protocol):
    """The life cycle every component implements.

    ``schema`` declares the metadata the component reads; the loader validates against it and
    passes the typed values to the constructor.
    """

    schema: ClassVar[MetadataSchema]

    def __init__(self, metadata: dict[str, Any], context: ComponentContext) -> None: ...

    async def init(self) -> None:
        """Connect or open files. Raising stops the sidecar at start-up."""

    async def close(self) -> None:
        """Release connections and flush anything buffered."""

    async def ping(self) -> None:
        """Raise when the backend cannot be reached right now."""

"""What a building block is to the component life cycle (``runtime/lifecycle/component_set.py``).

A building block serves the components of one kind (the part of the component type before the
first dot: ``state`` serves ``state.redis``). For each started component it builds the entry it
will serve requests from (key prefix, encryption wrapping, topic scopes ...), says what the
component can do (``/v1.0/metadata`` capabilities), and installs entries under their names, which
is how a hot reload swaps or removes one. It knows nothing of transports, files or start order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from components.base import Component
    from runtime.delivery.app_channel import AppChannel
    from runtime.observability.metrics import Metrics
    from runtime.observability.tracing import Tracer
    from runtime.resources.configuration import Configuration
    from runtime.resources.loader import ComponentResource
    from runtime.resources.resiliency import Resiliency


@dataclass
class LoadedComponent:
    """A started component and what its block built for it."""

    resource: ComponentResource
    instance: Component
    # The typed metadata, validated against the component's schema and its block's fields.
    metadata: dict[str, Any]
    entry: Any = None
    capabilities: list[str] = field(default_factory=list)


class ComponentProblem(Exception):
    """The component's runtime-level metadata cannot be used (a bad keyPrefix, a missing key);
    the message names the problem, the caller adds file and component."""


@dataclass(frozen=True)
class BlockContext:
    """What a block is told about the sidecar when it is made."""

    app_id: str
    configuration: Configuration
    metrics: Metrics | None = None
    tracer: Tracer | None = None
    # The channel to the app (made on first use); None without --app-port.
    app_channel: Callable[[], AppChannel] | None = None
    # kind: Resiliency resources: policies for component targets (docs/invocation.md).
    resiliency: Resiliency | None = None


class BuildingBlock(Protocol):
    # Component types "<kind>.<name>" belong to this block.
    kind: ClassVar[str]

    @classmethod
    def create(cls, context: BlockContext) -> BuildingBlock:
        """How ``runtime/blocks/registry.py`` makes the block for one sidecar."""

    def build(self, component: LoadedComponent) -> Any:
        """The entry requests are served from; ``ComponentProblem`` when it cannot be made."""

    def capabilities(self, entry: Any) -> list[str]:
        """What the component can do, as ``/v1.0/metadata`` lists it."""

    def install(self, name: str, entry: Any | None) -> None:
        """Serve ``entry`` as ``name`` from the next request on; None stops serving ``name``.

        Requests that already hold the previous entry finish with it.
        """

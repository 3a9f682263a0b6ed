"""The building blocks the sidecar serves. Adding one is one line in ``REGISTERED``."""

from __future__ import annotations

from typing import TypeVar, cast

from runtime.blocks.base import BlockContext, BuildingBlock
from runtime.blocks.bindings import BindingsBlock
from runtime.blocks.configuration import ConfigurationAPIBlock
from runtime.blocks.lock import LockBlock
from runtime.blocks.pubsub import PubSubBlock
from runtime.blocks.secrets import SecretsBlock
from runtime.blocks.state import StateBlock

REGISTERED: tuple[type[BuildingBlock], ...] = (
    StateBlock,
    PubSubBlock,
    SecretsBlock,
    BindingsBlock,
    LockBlock,
    ConfigurationAPIBlock,
)

B = TypeVar("B")


class Blocks:
    """One instance of every registered block, made for one sidecar."""

    def __init__(
        self, context: BlockContext, registered: tuple[type[BuildingBlock], ...] = REGISTERED
    ) -> None:
        self._by_kind: dict[str, BuildingBlock] = {t.kind: t.create(context) for t in registered}
        self._by_type: dict[type, BuildingBlock] = {type(b): b for b in self._by_kind.values()}

    def for_kind(self, kind: str) -> BuildingBlock | None:
        """The block serving components of ``kind`` (``state`` for ``state.redis``)."""
        return self._by_kind.get(kind)

    def all(self) -> list[BuildingBlock]:
        return list(self._by_kind.values())

    def get(self, block_type: type[B]) -> B:
        """The block of that class; how a transport finds the block its routes call."""
        return cast(B, self._by_type[block_type])

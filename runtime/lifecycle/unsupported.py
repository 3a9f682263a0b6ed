"""Components of building blocks Pillion does not have (``workflow.*``, ``middleware.*``,
``crypto.*``, ``conversation.*``, ...).

A resources folder written for daprd often holds some. Rather than refusing the whole folder,
each such component is set aside with one warning, listed under ``componentsNotLoaded`` in
``/v1.0/metadata``, and API calls naming it get daprd's not-found error. A misspelt type within
a block Pillion has (``state.redsi``) is still a start-up error: that one is a mistake.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from runtime.resources.loader import ComponentResource

log = logging.getLogger("pillion")


@dataclass(frozen=True, slots=True)
class NotLoaded:
    name: str
    type: str
    version: str

    @property
    def building_block(self) -> str:
        return self.type.split(".", 1)[0]

    def describe(self) -> dict[str, str]:
        return {
            "name": self.name,
            "type": self.type,
            "version": self.version or "v1",
            "reason": f"Pillion has no {self.building_block} building block",
        }


def set_aside(resources: Iterable[ComponentResource]) -> tuple[list[ComponentResource], list[NotLoaded]]:
    """Split the components Pillion can start from those of blocks it lacks, warning for each."""
    kept: list[ComponentResource] = []
    aside: list[NotLoaded] = []
    for resource in resources:
        if resource.block_implemented:
            kept.append(resource)
            continue
        log.warning(
            "%s: component %r of type %s is not loaded: Pillion has no %s building block",
            resource.file,
            resource.name,
            resource.type,
            resource.building_block,
        )
        aside.append(NotLoaded(resource.name, resource.type, resource.version))
    return kept, aside

"""``secretstores.local.env``: the sidecar's environment variables as secrets.

As in Dapr, a variable that is not set reads as an empty string, not an error, and ``prefix`` is
put before each name on lookup and taken off the names in bulk results. Variables that hold the
sidecar's own credentials are refused (they read as empty and are left out of bulk results):
``APP_API_TOKEN`` and every name starting with ``DAPR_`` or ``PILLION_``, in any letter case.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, ClassVar

from components.base import ComponentContext
from components.metadata import MetadataField, MetadataSchema
from components.secretstores.base import SecretStoreFeature

log = logging.getLogger("pillion.secretstores.env")
_REFUSED_PREFIXES = ("DAPR_", "PILLION_")


def refused(variable: str) -> bool:
    upper = variable.upper()
    return upper == "APP_API_TOKEN" or upper.startswith(_REFUSED_PREFIXES)


class LocalEnvSecretStore:
    schema: ClassVar[MetadataSchema] = MetadataSchema(
        (
            MetadataField(
                "prefix",
                default="",
                description="Put before every secret name to form the variable name; bulk reads "
                "return only the variables that start with it, with it taken off.",
            ),
        )
    )
    features: ClassVar[frozenset[SecretStoreFeature]] = frozenset()

    def __init__(self, metadata: dict[str, Any], context: ComponentContext) -> None:
        self._prefix: str = metadata["prefix"]

    async def init(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def get(self, name: str, metadata: Mapping[str, str]) -> dict[str, str]:
        variable = self._prefix + name
        if refused(variable):
            log.warning("access to environment variable %s is refused: it belongs to the sidecar", variable)
            return {name: ""}
        return {name: os.environ.get(variable, "")}

    async def bulk_get(self, metadata: Mapping[str, str]) -> dict[str, dict[str, str]]:
        cut = len(self._prefix)
        return {
            variable[cut:]: {variable[cut:]: value}
            for variable, value in os.environ.items()
            if len(variable) > cut and variable.startswith(self._prefix) and not refused(variable)
        }

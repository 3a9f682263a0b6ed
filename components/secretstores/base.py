"""The secret store interface, after components-contrib's ``secretstores.SecretStore``."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from components.base import Component


class SecretStoreFeature(StrEnum):
    # A secret is a map of several keys (a Kubernetes Secret, a multiValued file entry), not one
    # value under the secret's own name.
    MULTIPLE_KEY_VALUES_PER_SECRET = "MULTIPLE_KEY_VALUES_PER_SECRET"


class SecretNotFound(Exception):
    """The store holds no secret with this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"secret {name} not found")
        self.name = name


class SecretStore(Component, Protocol):
    """Secrets are maps of strings: a single-value store answers ``{name: value}``.

    Neither method may put a secret value into an exception message: the runtime shows those
    messages to callers and in logs.
    """

    @property
    def features(self) -> frozenset[SecretStoreFeature]: ...

    async def get(self, name: str, metadata: Mapping[str, str]) -> dict[str, str]:
        """Raise SecretNotFound when there is no such secret."""

    async def bulk_get(self, metadata: Mapping[str, str]) -> dict[str, dict[str, str]]:
        """Every secret the store holds, by name."""


class PreloadedSecretStore:
    """``get``, ``bulk_get``, ``close`` and ``ping`` of a store whose ``init`` reads every secret
    into ``_secrets`` once."""

    _secrets: dict[str, dict[str, str]]

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def get(self, name: str, metadata: Mapping[str, str]) -> dict[str, str]:
        secret = self._secrets.get(name)
        if secret is None:
            raise SecretNotFound(name)
        return dict(secret)

    async def bulk_get(self, metadata: Mapping[str, str]) -> dict[str, dict[str, str]]:
        return {name: dict(secret) for name, secret in self._secrets.items()}


def local_path(text: str, resource_dir: Path) -> Path:
    """A file named in metadata: relative paths are looked up next to the component file first,
    then in the working directory (where Dapr looks), so Dapr's samples keep working."""
    path = Path(text).expanduser()
    if path.is_absolute():
        return path
    beside = resource_dir / path
    if beside.exists() or not path.exists():
        return beside
    return path

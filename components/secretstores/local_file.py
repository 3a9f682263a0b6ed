"""``secretstores.local.file``: secrets read once, at start-up, from a JSON file.

Nested objects and arrays flatten into names joined by ``nestedSeparator`` (``{"db": {"pw": "x"}}``
is the secret ``db:pw``). With ``multiValued`` each top-level entry is one secret whose keys are
the entry's own (flattened) fields. Unlike Dapr, numbers and booleans keep their JSON spelling
(``5``, ``true``) instead of Go's ``%s`` rendering, and a name that flattens twice is an error.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

from components.base import ComponentContext
from components.metadata import FieldType, MetadataField, MetadataSchema
from components.secretstores.base import PreloadedSecretStore, SecretStoreFeature, local_path


class SecretsFileError(ValueError):
    """The secrets file cannot be used; the message names the file, never a value."""


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value)


def flatten(tree: Any, separator: str, prefix: str = "") -> dict[str, str]:
    """Leaves of a JSON tree by path; array items are numbered from 0."""
    if isinstance(tree, dict):
        children: list[tuple[str, Any]] = list(tree.items())
    elif isinstance(tree, list):
        children = [(str(i), item) for i, item in enumerate(tree)]
    else:
        return {prefix: _text(tree)}
    flat: dict[str, str] = {}
    for name, child in children:
        path = f"{prefix}{separator}{name}" if prefix else name
        for leaf, value in flatten(child, separator, path).items():
            if leaf in flat:
                raise SecretsFileError(f"the name {leaf!r} occurs twice once nested names are joined")
            flat[leaf] = value
    return flat


class LocalFileSecretStore(PreloadedSecretStore):
    schema: ClassVar[MetadataSchema] = MetadataSchema(
        (
            MetadataField(
                "secretsFile",
                required=True,
                description="The JSON file of secrets. A relative path is looked up next to the "
                "component file first, then in the working directory (Dapr's rule).",
            ),
            MetadataField(
                "nestedSeparator",
                default=":",
                description="Joins the names of nested objects and array indexes into one secret name.",
            ),
            MetadataField(
                "multiValued",
                FieldType.BOOLEAN,
                default=False,
                description="Each top-level entry is one secret with several keys, instead of one "
                "secret per leaf.",
            ),
        )
    )
    # Per instance: only a multiValued file has multi-key secrets.
    features: frozenset[SecretStoreFeature] = frozenset()

    def __init__(self, metadata: dict[str, Any], context: ComponentContext) -> None:
        self._path = local_path(metadata["secretsFile"], context.resource_dir)
        self._separator: str = metadata["nestedSeparator"] or ":"
        self._multi: bool = metadata["multiValued"]
        if self._multi:
            self.features = frozenset({SecretStoreFeature.MULTIPLE_KEY_VALUES_PER_SECRET})
        self._secrets: dict[str, dict[str, str]] = {}

    def _read(self) -> Any:
        try:
            return json.loads(self._path.read_bytes())
        except OSError as exc:
            raise SecretsFileError(f"cannot read secrets file {self._path}: {exc.strerror}") from None
        except ValueError as exc:
            # json's messages give a position, never the text around it.
            raise SecretsFileError(f"secrets file {self._path} is not valid JSON: {exc}") from None

    def _secrets_of(self, tree: Any) -> dict[str, dict[str, str]]:
        if not isinstance(tree, dict):
            raise SecretsFileError("it must hold a JSON object")
        if not self._multi:
            return {name: {name: value} for name, value in flatten(tree, self._separator).items()}
        secrets: dict[str, dict[str, str]] = {}
        for name, entry in tree.items():
            if isinstance(entry, dict | list):
                secrets[name] = flatten(entry, self._separator)
            else:
                secrets[name] = {name: _text(entry)}
        return secrets

    async def init(self) -> None:
        tree = await asyncio.to_thread(self._read)
        try:
            self._secrets = self._secrets_of(tree)
        except SecretsFileError as exc:
            raise SecretsFileError(f"secrets file {self._path}: {exc}") from None

"""Loading Dapr resource files (``Component`` documents) from the resources paths.

Every problem is a :class:`ResourceError` that names the file, the component and the problem, so
the sidecar can stop at start-up with one readable line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components import registry
from components.metadata import MetadataError, parse_duration
from runtime.component_fields import schema_for

API_VERSION = "dapr.io/v1alpha1"
_INITIAL_VERSIONS = frozenset({"", "v0", "v1"})


class ResourceError(Exception):
    def __init__(self, file: Path | str, component: str | None, problem: str) -> None:
        where = f"{file}: component {component!r}" if component else str(file)
        super().__init__(f"{where}: {problem}")
        self.file = str(file)
        self.component = component
        self.problem = problem


@dataclass(frozen=True)
class ComponentResource:
    name: str
    type: str
    version: str
    metadata: dict[str, str]
    file: Path
    scopes: tuple[str, ...] = ()
    ignore_errors: bool = False
    init_timeout: float = 5.0

    @property
    def building_block(self) -> str:
        return self.type.split(".", 1)[0]


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, dict | list):
        # Dapr treats structured values as their JSON text (e.g. queryIndexes).
        return json.dumps(value)
    return str(value)


def _parse_component(doc: dict[str, Any], file: Path) -> ComponentResource:
    meta = doc.get("metadata") or {}
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise ResourceError(file, None, "a Component needs metadata.name")
    name: str = meta["name"]
    if "/" in name or name.strip() != name or "||" in name:
        raise ResourceError(file, name, "metadata.name must be a plain name (no '/', '||' or spaces)")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        raise ResourceError(file, name, "spec is missing")
    ctype = spec.get("type")
    if not isinstance(ctype, str) or not ctype:
        raise ResourceError(file, name, "spec.type is missing")
    version = str(spec.get("version") or "")
    items = spec.get("metadata") or []
    if not isinstance(items, list):
        raise ResourceError(file, name, "spec.metadata must be a list of {name, value} items")
    values: dict[str, str] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ResourceError(file, name, "each spec.metadata item needs a name")
        field_name = item["name"]
        if "secretKeyRef" in item:
            raise ResourceError(
                file,
                name,
                f"metadata field {field_name!r}: secretKeyRef is not supported yet; give the value inline",
            )
        if "envRef" in item:
            raise ResourceError(file, name, f"metadata field {field_name!r}: envRef is not supported yet")
        if field_name in values:
            raise ResourceError(file, name, f"metadata field {field_name!r} is given twice")
        values[field_name] = _scalar_text(item.get("value"))
    scopes = doc.get("scopes") or []
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise ResourceError(file, name, "scopes must be a list of app ids")
    timeout_text = spec.get("initTimeout") or "5s"
    try:
        init_timeout = parse_duration(str(timeout_text))
    except ValueError as exc:
        raise ResourceError(file, name, f"spec.initTimeout: {exc}") from None
    return ComponentResource(
        name=name,
        type=ctype,
        version=version,
        metadata=values,
        file=file,
        scopes=tuple(scopes),
        ignore_errors=bool(spec.get("ignoreErrors", False)),
        init_timeout=init_timeout,
    )


def _resource_files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for folder in paths:
        if not folder.is_dir():
            raise ResourceError(folder, None, "resources path is not a directory")
        files.extend(sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml")))
    return files


def _documents(file: Path) -> list[dict[str, Any]]:
    try:
        docs = list(yaml.safe_load_all(file.read_text(encoding="utf-8")))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ResourceError(file, None, f"invalid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResourceError(file, None, f"cannot read file: {exc}") from None
    return [d for d in docs if d is not None]


def load_components(paths: Iterable[Path], app_id: str) -> list[ComponentResource]:
    """Read every ``Component`` for ``app_id`` and check it against its component's schema."""
    namespace = os.environ.get("NAMESPACE", "")
    found: dict[tuple[str, str], ComponentResource] = {}
    for file in _resource_files(paths):
        for doc in _documents(file):
            if not isinstance(doc, dict):
                raise ResourceError(file, None, "a resource document must be a mapping")
            if doc.get("kind") != "Component" or doc.get("apiVersion") != API_VERSION:
                continue  # Other kinds are read by their own loaders; unknown ones are ignored.
            component = _parse_component(doc, file)
            doc_ns = (doc.get("metadata") or {}).get("namespace") or ""
            if namespace and doc_ns and doc_ns != namespace:
                continue
            if component.scopes and app_id not in component.scopes:
                continue
            validate_component(component)
            key = (component.building_block, component.name)
            if key in found:
                raise ResourceError(
                    file,
                    component.name,
                    f"duplicate name: a {component.building_block} component with this name "
                    f"is already defined in {found[key].file}",
                )
            found[key] = component
    return list(found.values())


def validate_component(component: ComponentResource) -> dict[str, Any]:
    """Check type, version and metadata; return the typed metadata the component will get."""
    cls = registry.component_class(component.type)
    if cls is None:
        known = ", ".join(registry.known_types())
        raise ResourceError(
            component.file, component.name, f"unknown spec.type {component.type!r} (known: {known})"
        )
    if component.version not in _INITIAL_VERSIONS:
        raise ResourceError(
            component.file,
            component.name,
            f"spec.version {component.version!r} is not supported for {component.type} (use v1)",
        )
    schema = schema_for(component.type, cls.schema)
    try:
        return schema.parse(component.metadata)
    except MetadataError as exc:
        raise ResourceError(component.file, component.name, str(exc)) from None

"""Loading Dapr resource files (``Component`` documents) from the resources paths.

Every problem is a :class:`ResourceError` that names the file, the component and the problem, so
the sidecar can stop at start-up with one readable line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from components import registry
from components.metadata import MetadataError, MetadataField, MetadataSchema, parse_duration
from runtime.resources.component_fields import schema_for

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
class SecretKeyRef:
    """``secretKeyRef`` on a metadata item: the value is key ``key`` of secret ``name``."""

    field: str
    name: str
    key: str


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
    # auth.secretStore: where the secret_refs are read (runtime/blocks/secrets.py fills them in).
    secret_store: str = ""
    secret_refs: tuple[SecretKeyRef, ...] = ()

    @property
    def building_block(self) -> str:
        return self.type.split(".", 1)[0]

    @property
    def block_implemented(self) -> bool:
        """False for a building block Pillion lacks (``workflow.*``, ``middleware.*``): such a
        component is listed as not loaded instead of stopping start-up."""
        return registry.implements_block(self.building_block)


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, dict | list):
        # Dapr treats structured values as their JSON text (e.g. queryIndexes). YAML dates and
        # timestamps inside them have no JSON type: they become their text.
        return json.dumps(value, default=str)
    return str(value)


def _env_ref(variable: Any, field_name: str, file: Path, component: str) -> str:
    """A value read from the sidecar's environment (Dapr's ``envRef``).

    Like daprd, the sidecar's own credentials are off limits: ``DAPR_*``, ``PILLION_*`` and
    ``APP_API_TOKEN``. An unset variable stops start-up rather than leaving the field empty.
    """
    where = f"metadata field {field_name!r}: envRef"
    if not isinstance(variable, str) or not variable or " " in variable:
        raise ResourceError(file, component, f"{where} must name an environment variable")
    upper = variable.upper()
    if upper.startswith(("DAPR_", "PILLION_")) or upper == "APP_API_TOKEN":
        raise ResourceError(file, component, f"{where} {variable!r} is refused: it is the sidecar's own")
    value = os.environ.get(variable)
    if value is None:
        raise ResourceError(file, component, f"{where} {variable!r} is not set")
    return value


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
    refs: list[SecretKeyRef] = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ResourceError(file, name, "each spec.metadata item needs a name")
        field_name = item["name"]
        if field_name in values or any(r.field == field_name for r in refs):
            raise ResourceError(file, name, f"metadata field {field_name!r} is given twice")
        if "secretKeyRef" in item:
            refs.append(_secret_key_ref(item, file, name))
        elif "envRef" in item:
            values[field_name] = _env_ref(item["envRef"], field_name, file, name)
        else:
            values[field_name] = _scalar_text(item.get("value"))
    auth = doc.get("auth") or {}
    secret_store = auth.get("secretStore") if isinstance(auth, dict) else None
    if secret_store is not None and (not isinstance(secret_store, str) or not secret_store):
        raise ResourceError(file, name, "auth.secretStore must be the name of a secret store")
    if refs and not secret_store:
        raise ResourceError(
            file,
            name,
            f"metadata field {refs[0].field!r}: secretKeyRef needs auth.secretStore, "
            "the secret store to read it from",
        )
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
        secret_store=secret_store or "",
        secret_refs=tuple(refs),
    )


def _secret_key_ref(item: dict[str, Any], file: Path, component: str) -> SecretKeyRef:
    where = f"metadata field {item['name']!r}"
    ref = item["secretKeyRef"]
    if "value" in item:
        raise ResourceError(file, component, f"{where}: give value or secretKeyRef, not both")
    if not isinstance(ref, dict) or not isinstance(ref.get("name"), str) or not ref["name"]:
        raise ResourceError(file, component, f"{where}: secretKeyRef needs a name")
    key = ref.get("key") or ref["name"]
    if not isinstance(key, str):
        raise ResourceError(file, component, f"{where}: secretKeyRef.key must be a string")
    return SecretKeyRef(item["name"], ref["name"], key)


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
            if component.block_implemented:
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
    # A component may also accept the later Dapr version whose behaviour it has (state.postgresql: v2).
    if component.version not in _INITIAL_VERSIONS | getattr(cls, "extra_versions", frozenset()):
        raise ResourceError(
            component.file,
            component.name,
            f"spec.version {component.version!r} is not supported for {component.type} (use v1)",
        )
    schema = _with_secret_fields(schema_for(component.type, cls.schema), component)
    try:
        return schema.parse(component.metadata)
    except MetadataError as exc:
        raise ResourceError(component.file, component.name, str(exc)) from None


def _with_secret_fields(schema: MetadataSchema, component: ComponentResource) -> MetadataSchema:
    """Fields still waiting for their secret are left out (they are checked once resolved);
    fields filled from a secret become sensitive, so no error message shows their value."""
    if not component.secret_refs:
        return schema
    pending = {r.field.lower() for r in component.secret_refs if r.field not in component.metadata}
    filled = {r.field.lower() for r in component.secret_refs if r.field in component.metadata}
    fields: list[MetadataField] = []
    for f in schema.fields:
        names = {n.lower() for n in (f.name, *f.aliases)}
        if not names & pending:
            fields.append(replace(f, sensitive=True) if names & filled else f)
    return MetadataSchema(tuple(fields))


# --- Subscription documents --------------------------------------------------------------------

SUBSCRIPTION_VERSIONS = frozenset({"dapr.io/v1alpha1", "dapr.io/v2alpha1"})


@dataclass(frozen=True)
class SubscriptionResource:
    """A declarative ``Subscription`` (v1alpha1 ``route`` or v2alpha1 ``routes``), not yet compiled."""

    name: str
    pubsubname: str
    topic: str
    # (match, path) pairs in order; routes.default (or v1's route) comes last with an empty match.
    rules: tuple[tuple[str, str], ...]
    dead_letter_topic: str
    metadata: dict[str, str]
    bulk_enabled: bool
    file: Path
    scopes: tuple[str, ...] = ()

    def where(self) -> str:
        return f"{self.file}: subscription {self.name!r}"


def _text_field(spec: dict[str, Any], name: str, where: str, file: Path) -> str:
    value = spec.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ResourceError(file, None, f"{where}: spec.{name} must be a string")
    return value


def _parse_subscription(doc: dict[str, Any], file: Path) -> SubscriptionResource:
    meta = doc.get("metadata") or {}
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise ResourceError(file, None, "a Subscription needs metadata.name")
    name: str = meta["name"]
    where = f"subscription {name!r}"
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        raise ResourceError(file, None, f"{where}: spec is missing")
    pubsubname = _text_field(spec, "pubsubname", where, file)
    topic = _text_field(spec, "topic", where, file)
    for field_name, value in (("pubsubname", pubsubname), ("topic", topic)):
        if not value:
            raise ResourceError(file, None, f"{where}: spec.{field_name} is required")
    rules: list[tuple[str, str]] = []
    if doc.get("apiVersion") == "dapr.io/v1alpha1":
        if "routes" in spec:
            raise ResourceError(file, None, f"{where}: spec.routes needs apiVersion dapr.io/v2alpha1")
        route = _text_field(spec, "route", where, file)
    else:
        if "route" in spec:
            raise ResourceError(
                file, None, f"{where}: spec.route is a dapr.io/v1alpha1 field; use spec.routes.default"
            )
        routes = spec.get("routes") or {}
        if not isinstance(routes, dict):
            raise ResourceError(file, None, f"{where}: spec.routes must be a mapping")
        raw_rules = routes.get("rules") or []
        if not isinstance(raw_rules, list):
            raise ResourceError(file, None, f"{where}: spec.routes.rules must be a list")
        for index, rule in enumerate(raw_rules):
            if not isinstance(rule, dict):
                raise ResourceError(file, None, f"{where}: spec.routes.rules[{index}] must be a mapping")
            match, path = rule.get("match") or "", rule.get("path") or ""
            if not isinstance(match, str) or not isinstance(path, str):
                raise ResourceError(
                    file, None, f"{where}: spec.routes.rules[{index}] match and path must be strings"
                )
            rules.append((match, path))
        route = _text_field(routes, "default", where, file)
    if route:
        rules.append(("", route))
    raw_metadata = spec.get("metadata") or {}
    if not isinstance(raw_metadata, dict):
        raise ResourceError(file, None, f"{where}: spec.metadata must be a mapping of names to values")
    bulk = spec.get("bulkSubscribe") or {}
    if not isinstance(bulk, dict):
        raise ResourceError(file, None, f"{where}: spec.bulkSubscribe must be a mapping")
    scopes = doc.get("scopes") or []
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise ResourceError(file, None, f"{where}: scopes must be a list of app ids")
    return SubscriptionResource(
        name=name,
        pubsubname=pubsubname,
        topic=topic,
        rules=tuple(rules),
        dead_letter_topic=_text_field(spec, "deadLetterTopic", where, file),
        metadata={str(k): _scalar_text(v) for k, v in raw_metadata.items()},
        bulk_enabled=bool(bulk.get("enabled", False)),
        file=file,
        scopes=tuple(scopes),
    )


def load_subscriptions(paths: Iterable[Path], app_id: str) -> list[SubscriptionResource]:
    """Read every ``Subscription`` (v1alpha1 and v2alpha1) that is in scope for ``app_id``."""
    namespace = os.environ.get("NAMESPACE", "")
    found: dict[str, SubscriptionResource] = {}
    for file in _resource_files(paths):
        for doc in _documents(file):
            if not isinstance(doc, dict):
                raise ResourceError(file, None, "a resource document must be a mapping")
            if doc.get("kind") != "Subscription" or doc.get("apiVersion") not in SUBSCRIPTION_VERSIONS:
                continue
            subscription = _parse_subscription(doc, file)
            doc_ns = (doc.get("metadata") or {}).get("namespace") or ""
            if namespace and doc_ns and doc_ns != namespace:
                continue
            if subscription.scopes and app_id not in subscription.scopes:
                continue
            if subscription.name in found:
                raise ResourceError(
                    file,
                    None,
                    f"subscription {subscription.name!r}: duplicate name: already defined in "
                    f"{found[subscription.name].file}",
                )
            found[subscription.name] = subscription
    return list(found.values())

"""The ``Configuration`` resource given with ``--config FILE``: secret scopes and API switches.

Other ``spec`` sections (metrics, ...) are read by the parts that use them; this module reads
``spec.secrets.scopes``, ``spec.api``, ``spec.tracing`` (sampling rate, OTLP endpoint),
``spec.accessControl`` and ``spec.nameResolution``. Mistakes
stop start-up with one line naming the file and the field, including a ``defaultAccess`` that is
neither allow nor deny (daprd treats a typo there as allow).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runtime.invocation.acl import AccessControl, parse_access_control
from runtime.observability.tracing import TracingSettings
from runtime.resources.loader import API_VERSION, ResourceError

log = logging.getLogger("pillion")

# Endpoints that no rule can switch off, as in daprd.
ALWAYS_ON_GROUPS = frozenset({"healthz"})


@dataclass(frozen=True)
class SecretScope:
    """Which secrets of one store the secrets API may hand out (docs/secrets.md: Configuration)."""

    store: str
    default_allow: bool = True
    allowed: frozenset[str] = frozenset()
    denied: frozenset[str] = frozenset()

    def allows(self, name: str) -> bool:
        if self.allowed:
            return name in self.allowed
        if name in self.denied:
            return False
        return self.default_allow


@dataclass(frozen=True)
class APIRule:
    name: str
    version: str

    @property
    def key(self) -> str:
        return f"{self.version}/{self.name}"


def _group_version(path_version: str) -> str:
    # Route versions are spelled "v1.0-alpha1"; endpoint groups "v1alpha1".
    return path_version.replace(".0", "").replace("-", "")


def _matches(rules: frozenset[APIRule], version: str, route: str) -> bool:
    """daprd's two ways for a rule to name an endpoint: its group (``v1`` + ``state``), or a
    prefix of its path template (``v1.0`` + ``state`` matches ``v1.0/state/{store}/{key}``)."""
    group_key = f"{_group_version(version)}/{route.split('/', 1)[0]}"
    template = f"{version}/{route}"
    return any(rule.key == group_key or template.startswith(rule.key) for rule in rules)


@dataclass(frozen=True)
class Configuration:
    name: str = ""
    file: Path | None = None
    secret_scopes: Mapping[str, SecretScope] = field(default_factory=dict)
    # Only the rules for the HTTP protocol: gRPC rules do not concern this server.
    api_allowed: frozenset[APIRule] = frozenset()
    api_denied: frozenset[APIRule] = frozenset()
    # The rules for the gRPC API (``protocol: grpc``), by ``name.version`` such as ``state.v1``.
    grpc_api_allowed: frozenset[APIRule] = frozenset()
    grpc_api_denied: frozenset[APIRule] = frozenset()
    tracing: TracingSettings = field(default_factory=TracingSettings)
    # spec.accessControl (invocations of this app) and spec.nameResolution (docs/invocation.md).
    access_control: AccessControl | None = None
    name_resolution: Mapping[str, Any] = field(default_factory=dict)

    def api_enabled(self, version: str, route: str) -> bool:
        """Whether the endpoint ``/<version>/<route>`` is served (daprd's ``IsAllowed``)."""
        if route.split("/", 1)[0] in ALWAYS_ON_GROUPS:
            return True
        if self.api_denied and _matches(self.api_denied, version, route):
            return False
        return not self.api_allowed or _matches(self.api_allowed, version, route)

    def grpc_api_enabled(self, rule: str) -> bool:
        """Whether the gRPC methods of the group ``rule`` (``state.v1``) are served."""
        name, _, version = rule.partition(".")
        wanted = APIRule(name, version)
        if wanted in self.grpc_api_denied:
            return False
        return not self.grpc_api_allowed or wanted in self.grpc_api_allowed


class _Reader:
    def __init__(self, file: Path, name: str) -> None:
        self.file = file
        self.name = name

    def error(self, where: str, problem: str) -> ResourceError:
        return ResourceError(self.file, None, f"configuration {self.name!r}: {where}: {problem}")

    def mapping(self, value: Any, where: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(where, "must be a mapping")
        return value

    def items(self, value: Any, where: str) -> list[dict[str, Any]]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise self.error(where, "must be a list of mappings")
        return value

    def strings(self, value: Any, where: str) -> frozenset[str]:
        if value is None:
            return frozenset()
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.error(where, "must be a list of strings")
        return frozenset(value)

    def text(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.error(where, "must be a non-empty string")
        return value

    def scopes(self, spec: dict[str, Any]) -> dict[str, SecretScope]:
        found: dict[str, SecretScope] = {}
        where = "spec.secrets.scopes"
        for i, item in enumerate(
            self.items(self.mapping(spec.get("secrets"), "spec.secrets").get("scopes"), where)
        ):
            at = f"{where}[{i}]"
            store = self.text(item.get("storeName"), f"{at}.storeName")
            if store in found:
                raise self.error(at, f"store {store!r} is scoped twice")
            access = str(item.get("defaultAccess") or "allow").lower()
            if access not in ("allow", "deny"):
                raise self.error(f"{at}.defaultAccess", f"{item.get('defaultAccess')!r} is not allow or deny")
            found[store] = SecretScope(
                store,
                access == "allow",
                self.strings(item.get("allowedSecrets"), f"{at}.allowedSecrets"),
                self.strings(item.get("deniedSecrets"), f"{at}.deniedSecrets"),
            )
        return found

    def rules(self, api: dict[str, Any], which: str, wanted: str = "http") -> frozenset[APIRule]:
        rules: set[APIRule] = set()
        where = f"spec.api.{which}"
        for i, item in enumerate(self.items(api.get(which), where)):
            at = f"{where}[{i}]"
            rule = APIRule(
                self.text(item.get("name"), f"{at}.name"), self.text(item.get("version"), f"{at}.version")
            )
            protocol = str(item.get("protocol") or "").lower()
            if protocol == wanted:
                rules.add(rule)
            elif protocol not in ("http", "grpc") and wanted == "http":
                # daprd applies a rule only to the protocol it names; say so rather than ignore it quietly.
                log.warning(
                    "%s: %s (%s %s) has protocol %r, so it applies to neither HTTP nor gRPC",
                    self.file,
                    at,
                    rule.name,
                    rule.version,
                    item.get("protocol") or "",
                )
        return frozenset(rules)

    def tracing(self, spec: dict[str, Any]) -> TracingSettings:
        tracing = self.mapping(spec.get("tracing"), "spec.tracing")
        rate: float | None = None
        if tracing.get("samplingRate") not in (None, ""):
            text = str(tracing["samplingRate"])
            try:
                rate = float(text)
            except ValueError:
                rate = -1.0
            if not 0.0 <= rate <= 1.0:
                raise self.error("spec.tracing.samplingRate", f"{text!r} is not a number from 0 to 1")
        otel = self.mapping(tracing.get("otel"), "spec.tracing.otel")
        endpoint = ""
        if otel.get("endpointAddress"):
            address = self.text(otel["endpointAddress"], "spec.tracing.otel.endpointAddress")
            secure = str(otel.get("isSecure", "")).lower() == "true"
            endpoint = _otlp_url(address, secure)
        return TracingSettings(rate, endpoint, str(otel.get("protocol") or ""))


def _otlp_url(address: str, secure: bool) -> str:
    """daprd's ``endpointAddress`` is ``host:port``; the OTLP/HTTP trace path is ``/v1/traces``."""
    if "://" not in address:
        address = f"{'https' if secure else 'http'}://{address}"
    scheme, _, rest = address.partition("://")
    return address if "/" in rest.rstrip("/") else f"{scheme}://{rest.rstrip('/')}/v1/traces"


def load_configuration(file: Path) -> Configuration:
    try:
        docs = [d for d in yaml.safe_load_all(file.read_text(encoding="utf-8")) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ResourceError(
            file, None, f"invalid YAML{where}: {getattr(exc, 'problem', None) or exc}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        problem = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ResourceError(file, None, f"cannot read configuration file: {problem}") from None
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "Configuration":
            break
    else:
        raise ResourceError(file, None, "no document of kind Configuration in this file")
    if doc.get("apiVersion") != API_VERSION:
        raise ResourceError(file, None, f"a Configuration needs apiVersion {API_VERSION}")
    meta = doc.get("metadata") or {}
    name = str(meta.get("name") or "") if isinstance(meta, dict) else ""
    reader = _Reader(file, name)
    spec = reader.mapping(doc.get("spec"), "spec")
    api = reader.mapping(spec.get("api"), "spec.api")
    try:
        access_control = parse_access_control(spec.get("accessControl"))
    except ValueError as exc:
        where, _, problem = str(exc).partition(": ")
        raise reader.error(where, problem) from None
    return Configuration(
        name=name,
        file=file,
        secret_scopes=reader.scopes(spec),
        api_allowed=reader.rules(api, "allowed"),
        api_denied=reader.rules(api, "denied"),
        grpc_api_allowed=reader.rules(api, "allowed", "grpc"),
        grpc_api_denied=reader.rules(api, "denied", "grpc"),
        tracing=reader.tracing(spec),
        access_control=access_control,
        name_resolution=reader.mapping(spec.get("nameResolution"), "spec.nameResolution"),
    )

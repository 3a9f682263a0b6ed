"""Subscriptions: declarative (resource files) and programmatic (the app's ``GET /dapr/subscribe``).

Routing rules are CEL expressions over ``event`` (the parsed CloudEvent, numbers as doubles),
compiled once when the subscription is read; the first rule that is true gives the route.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from components.metadata import FieldType, MetadataError, MetadataField, MetadataSchema
from runtime.compat.gojson import as_doubles, decode_precise
from runtime.resources.component_fields import DELIVERY_FIELDS
from runtime.resources.loader import SubscriptionResource

log = logging.getLogger("pillion.pubsub")

DECLARATIVE = "DECLARATIVE"
PROGRAMMATIC = "PROGRAMMATIC"
STREAMING = "STREAMING"
# The delivery settings a subscription's metadata may override; absent ones stay None.
_OVERRIDES = MetadataSchema(
    (
        *(replace(f, default=None) for f in DELIVERY_FIELDS.fields),
        MetadataField("concurrency", FieldType.INTEGER),
    )
)


class SubscriptionError(Exception):
    """A subscription that cannot be used; the message is one line naming it and the problem."""


class RoutingError(Exception):
    """A rule could not be evaluated for an event (an error, or a result that is not a boolean)."""


# --- CEL -------------------------------------------------------------------------------------


@functools.cache
def _cel() -> Any:
    # `import cel` also imports the package's command-line tool (typer and rich: about 0.2 s and
    # 28 MB), so the compiler, a native extension inside the package, is loaded on its own.
    spec = importlib.util.find_spec("cel")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            candidate = Path(folder) / f"cel{suffix}"
            if not candidate.is_file():
                continue
            loader = importlib.machinery.ExtensionFileLoader("cel.cel", str(candidate))
            module_spec = importlib.util.spec_from_file_location("cel.cel", candidate, loader=loader)
            if module_spec is not None:
                module = importlib.util.module_from_spec(module_spec)
                loader.exec_module(module)
                return module
    import cel

    return cel


def compile_match(expression: str) -> Any:
    """Compile a CEL expression; ``ValueError`` with the compiler's message when it does not parse."""
    try:
        return _cel().compile(expression)
    except Exception as exc:
        # The compiler's message goes on to draw the expression with a caret: keep the first line.
        raise ValueError(str(exc).strip().splitlines()[0]) from None


# --- the model -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    match: str
    path: str
    # The compiled CEL program; None for an empty match, which is always true. Two rules with the
    # same text are equal (a reload compares subscriptions), whatever their compiled objects.
    program: Any = field(default=None, compare=False)

    def describe(self) -> dict[str, str]:
        shown: dict[str, str] = {}
        if self.match:
            shown["match"] = self.match
        if self.path:
            shown["path"] = self.path
        return shown


@dataclass(frozen=True)
class Subscription:
    pubsubname: str
    topic: str
    rules: tuple[Rule, ...]
    kind: str
    dead_letter_topic: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    name: str = ""
    bulk_enabled: bool = False
    raw_payload: bool = False
    # Delivery settings given in the metadata (deliveryMaxAttempts, ..., concurrency), typed.
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.pubsubname, self.topic)

    def label(self) -> str:
        return f"{self.pubsubname}/{self.topic}"

    def route(self, event: dict[str, Any]) -> str | None:
        """The path of the first rule that matches ``event``, or None when none does."""
        variables: dict[str, Any] | None = None
        for rule in self.rules:
            if rule.program is None:
                return rule.path
            if variables is None:
                # Converted only when a rule needs it: numbers are doubles in daprd's CEL.
                variables = {"event": as_doubles(event)}
            try:
                result = rule.program.execute(variables)
            except KeyError as exc:
                raise RoutingError(f"evaluating {rule.match!r}: no such key {exc}") from None
            except Exception as exc:
                raise RoutingError(f"evaluating {rule.match!r}: {exc}") from None
            if not isinstance(result, bool):
                raise RoutingError(f"the result of match expression {rule.match} was not a boolean")
            if result:
                return rule.path
        return None

    def describe(self) -> dict[str, Any]:
        """The subscription as GET /v1.0/metadata lists it."""
        shown: dict[str, Any] = {
            "pubsubname": self.pubsubname,
            "topic": self.topic,
            "deadLetterTopic": self.dead_letter_topic,
            "type": self.kind,
        }
        if self.metadata:
            shown["metadata"] = self.metadata
        rules = [rule.describe() for rule in self.rules]
        if rules:
            shown["rules"] = rules
        return shown


def _build(
    *,
    where: str,
    pubsubname: str,
    topic: str,
    rules: Iterable[tuple[str, str]],
    kind: str,
    dead_letter_topic: str,
    metadata: dict[str, str],
    name: str = "",
    bulk_enabled: bool = False,
) -> Subscription:
    compiled: list[Rule] = []
    for index, (match, path) in enumerate(rules):
        expression = match.strip()
        program = None
        if expression:
            try:
                program = compile_match(expression)
            except ValueError as exc:
                raise SubscriptionError(
                    f"{where}: routing rule {index} match {match!r} does not compile: {exc}"
                ) from None
        compiled.append(Rule(match, path, program))
    raw = metadata.get("rawPayload", "")
    try:
        raw_payload = parse_go_bool(raw) if raw else False
    except ValueError:
        raise SubscriptionError(
            f"{where}: metadata rawPayload value must be a valid boolean: actual is '{raw}'"
        ) from None
    try:
        parsed = _OVERRIDES.parse(metadata)
    except MetadataError as exc:
        raise SubscriptionError(f"{where}: {exc}") from None
    overrides = {f.name: parsed[f.name] for f in _OVERRIDES.fields if parsed[f.name] is not None}
    return Subscription(
        pubsubname=pubsubname,
        topic=topic,
        rules=tuple(compiled),
        kind=kind,
        dead_letter_topic=dead_letter_topic,
        metadata=metadata,
        name=name,
        bulk_enabled=bulk_enabled,
        raw_payload=raw_payload,
        overrides=overrides,
    )


_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_go_bool(text: str) -> bool:
    """Go's strconv.ParseBool, which Dapr uses for rawPayload."""
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise ValueError(text)


def from_resource(resource: SubscriptionResource) -> Subscription:
    """A declarative subscription, its rules compiled; ``SubscriptionError`` names the file."""
    return _build(
        where=resource.where(),
        pubsubname=resource.pubsubname,
        topic=resource.topic,
        rules=resource.rules,
        kind=DECLARATIVE,
        dead_letter_topic=resource.dead_letter_topic,
        metadata=resource.metadata,
        name=resource.name,
        bulk_enabled=resource.bulk_enabled,
    )


def streaming(pubsubname: str, topic: str, metadata: dict[str, str], dead_letter_topic: str) -> Subscription:
    """A streaming subscription of the gRPC API: every event goes to route ``/``."""
    return _build(
        where=f"streaming subscription {pubsubname}/{topic}",
        pubsubname=pubsubname,
        topic=topic,
        rules=[("", "/")],
        kind=STREAMING,
        dead_letter_topic=dead_letter_topic,
        metadata=metadata,
        name=f"___{pubsubname}||{topic}",
    )


def from_grpc_app(
    items: Iterable[tuple[str, str, dict[str, str], list[tuple[str, str]], str, str, bool]],
) -> list[Subscription]:
    """Subscriptions from a gRPC app's ListTopicSubscriptions: (pubsub, topic, metadata, rules,
    default path, dead-letter topic, bulk). No routes at all means one match-all rule with an
    empty path, as daprd does."""
    found: dict[tuple[str, str], Subscription] = {}
    for pubsubname, topic, metadata, rules, default, dead_letter_topic, bulk in items:
        routed = list(rules)
        if default:
            routed.append(("", default))
        if not routed:
            routed.append(("", ""))
        subscription = _build(
            where=f"ListTopicSubscriptions: subscription {pubsubname}/{topic}",
            pubsubname=pubsubname,
            topic=topic,
            rules=routed,
            kind=PROGRAMMATIC,
            dead_letter_topic=dead_letter_topic,
            metadata=metadata,
            bulk_enabled=bulk,
        )
        found.pop(subscription.key, None)
        found[subscription.key] = subscription
    return list(found.values())


def _field(obj: Mapping[str, Any], name: str) -> Any:
    # Go's encoding/json matches struct fields case-insensitively.
    if name in obj:
        return obj[name]
    lowered = name.lower()
    return next((v for k, v in obj.items() if k.lower() == lowered), None)


def _text(obj: Mapping[str, Any], name: str, where: str) -> str:
    value = _field(obj, name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SubscriptionError(f"{where}: {name} must be a string")
    return value


def from_app(body: bytes) -> list[Subscription]:
    """Subscriptions from the app's ``GET /dapr/subscribe`` answer (a 200 body)."""
    where = "GET /dapr/subscribe"
    if not body.strip():
        return []
    try:
        items = decode_precise(body)
    except ValueError as exc:
        raise SubscriptionError(f"{where}: the answer is not JSON: {exc}") from None
    if items is None:
        return []
    if not isinstance(items, list):
        raise SubscriptionError(f"{where}: the answer must be a JSON array of subscriptions")
    found: dict[tuple[str, str], Subscription] = {}
    for index, item in enumerate(items):
        here = f"{where}: subscription {index}"
        if not isinstance(item, dict):
            raise SubscriptionError(f"{here} must be an object")
        pubsubname, topic = _text(item, "pubsubname", here), _text(item, "topic", here)
        here = f"{where}: subscription {pubsubname}/{topic}"
        routes = _field(item, "routes") or {}
        if not isinstance(routes, dict):
            raise SubscriptionError(f"{here}: routes must be an object")
        raw_rules = _field(routes, "rules") or []
        if not isinstance(raw_rules, list) or not all(isinstance(r, dict) for r in raw_rules):
            raise SubscriptionError(f"{here}: routes.rules must be an array of objects")
        rules = [(_text(r, "match", here), _text(r, "path", here)) for r in raw_rules]
        default = _text(routes, "default", here) or _text(item, "route", here)
        if default:
            rules.append(("", default))
        if not rules:
            log.warning("topic %s has an empty routes. removing from subscriptions list", topic)
            continue
        metadata = _field(item, "metadata") or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise SubscriptionError(f"{here}: metadata must be an object of strings")
        bulk = _field(item, "bulkSubscribe") or {}
        if not isinstance(bulk, dict):
            raise SubscriptionError(f"{here}: bulkSubscribe must be an object")
        subscription = _build(
            where=here,
            pubsubname=pubsubname,
            topic=topic,
            rules=rules,
            kind=PROGRAMMATIC,
            dead_letter_topic=_text(item, "deadLetterTopic", here),
            metadata=metadata,
            bulk_enabled=_field(bulk, "enabled") is True,
        )
        # The last entry for a pubsub and topic wins, as in daprd.
        found.pop(subscription.key, None)
        found[subscription.key] = subscription
    return list(found.values())


def merge(declarative: Sequence[Subscription], programmatic: Sequence[Subscription]) -> list[Subscription]:
    """One subscription per pubsub and topic: the first declarative one, replaced by the app's own."""
    merged: dict[tuple[str, str], Subscription] = {}
    for subscription in declarative:
        merged.setdefault(subscription.key, subscription)
    for subscription in programmatic:
        merged[subscription.key] = subscription
    return list(merged.values())

"""Typed metadata schemas for components.

Each component declares its metadata once as a :class:`MetadataSchema`. The resource loader
validates a Component's ``spec.metadata`` against it (naming the field in errors) and the
component reference in ``docs/components.md`` is generated from it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class FieldType(Enum):
    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    DURATION = "duration"


class MetadataError(ValueError):
    """A metadata value is missing or cannot be read; ``field`` names it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"metadata field {field!r}: {problem}")
        self.field = field
        self.problem = problem


_TRUE = frozenset({"1", "t", "true", "y", "yes", "on"})
_FALSE = frozenset({"0", "f", "false", "n", "no", "off"})
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{value!r} is not a boolean")


def parse_duration(value: str, bare_unit_seconds: float = 1.0) -> float:
    """Read a Go duration ("1m30s", "250ms") or a bare number in ``bare_unit_seconds``; returns seconds."""
    text = value.strip()
    if not text:
        raise ValueError("empty duration")
    try:
        return float(text) * bare_unit_seconds
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    total, pos = 0.0, 0
    for match in _DURATION_PART.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(body) or pos == 0:
        raise ValueError(f"{value!r} is not a duration (use e.g. 500ms, 30s, 1m30s)")
    return sign * total


@dataclass(frozen=True, slots=True)
class MetadataField:
    name: str
    type: FieldType = FieldType.STRING
    default: str | int | float | bool | None = None
    required: bool = False
    description: str = ""
    sensitive: bool = False
    aliases: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    # How a bare number is read for DURATION fields: 1.0 means seconds, 0.001 milliseconds.
    bare_unit_seconds: float = 1.0

    def convert(self, raw: str) -> Any:
        try:
            if self.type is FieldType.STRING:
                if self.choices and raw.lower() not in self.choices:
                    raise ValueError(f"{raw!r} is not one of {', '.join(self.choices)}")
                return raw.lower() if self.choices else raw
            if self.type is FieldType.INTEGER:
                return int(raw.strip())
            if self.type is FieldType.NUMBER:
                return float(raw.strip())
            if self.type is FieldType.BOOLEAN:
                return parse_bool(raw)
            return parse_duration(raw, self.bare_unit_seconds)
        except ValueError as exc:
            shown = "(hidden)" if self.sensitive else repr(raw)
            reason = str(exc) if not self.sensitive else f"not a valid {self.type.value}"
            raise MetadataError(self.name, f"value {shown} is invalid: {reason}") from None


@dataclass(frozen=True)
class MetadataSchema:
    fields: tuple[MetadataField, ...] = ()
    _index: dict[str, MetadataField] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, MetadataField] = {}
        for f in self.fields:
            for name in (f.name, *f.aliases):
                index[name.lower()] = f
        object.__setattr__(self, "_index", index)

    def __add__(self, other: MetadataSchema) -> MetadataSchema:
        return MetadataSchema(self.fields + other.fields)

    def parse(self, raw: Mapping[str, str]) -> dict[str, Any]:
        """Validate ``raw`` (names matched case-insensitively, as Dapr does) and return typed values.

        Every declared field is present in the result, holding its default when not given.
        Unknown names are kept as strings under their own name: components may pass them on.
        """
        result: dict[str, Any] = {f.name: f.default for f in self.fields}
        seen: set[str] = set()
        for name, value in raw.items():
            declared = self._index.get(name.lower())
            if declared is None:
                result[name] = value
                continue
            if declared.name in seen:
                raise MetadataError(declared.name, f"given more than once (as {name!r})")
            seen.add(declared.name)
            result[declared.name] = declared.convert(value)
        for f in self.fields:
            if f.required and (f.name not in seen or result[f.name] in ("", None)):
                raise MetadataError(f.name, "is required")
        return result

    def sensitive_names(self) -> frozenset[str]:
        return frozenset(f.name for f in self.fields if f.sensitive)

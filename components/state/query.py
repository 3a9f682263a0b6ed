"""Dapr's alpha state query language: parsing, and an evaluator for stores that filter in Python.

The body is ``{"filter": {...}, "sort": [{"key": "a.b", "order": "ASC|DESC"}], "page": {"limit": N,
"token": "<offset>"}}`` with filters EQ, NEQ, GT, GTE, LT, LTE, IN, AND, OR over dotted field paths.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cmp_to_key
from typing import Any

COMPARISONS = frozenset({"EQ", "NEQ", "GT", "GTE", "LT", "LTE"})
# Evaluating a filter recurses once per level; this keeps far from Python's recursion limit.
MAX_FILTER_DEPTH = 50


class QueryError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Filter:
    op: str  # a comparison, "IN", "AND" or "OR"
    path: tuple[str, ...] = ()
    value: Any = None
    children: tuple[Filter, ...] = ()


@dataclass(frozen=True, slots=True)
class SortKey:
    path: tuple[str, ...]
    descending: bool = False


@dataclass(frozen=True, slots=True)
class Query:
    filter: Filter | None = None
    sort: tuple[SortKey, ...] = ()
    limit: int = 0
    offset: int = 0


@dataclass(slots=True)
class QueryResult:
    key: str
    data: bytes
    etag: str | None = None


@dataclass(slots=True)
class QueryPage:
    results: list[QueryResult] = field(default_factory=list)
    token: str | None = None


def _get_ci(obj: Mapping[str, Any], name: str) -> Any:
    if name in obj:
        return obj[name]
    lowered = name.lower()
    for key, value in obj.items():
        if key.lower() == lowered:
            return value
    return None


def _path(text: Any) -> tuple[str, ...]:
    if not isinstance(text, str) or not text or any(not part for part in text.split(".")):
        raise QueryError(f"invalid field path {text!r}")
    return tuple(text.split("."))


def _parse_filter(node: Any, depth: int = 1) -> Filter:
    if not isinstance(node, dict) or len(node) != 1:
        raise QueryError("a filter must be an object with exactly one operator")
    if depth > MAX_FILTER_DEPTH:
        raise QueryError(f"filters may nest at most {MAX_FILTER_DEPTH} levels deep")
    ((op, arg),) = node.items()
    if op in ("AND", "OR"):
        if not isinstance(arg, list) or len(arg) < 2:
            raise QueryError(f"{op} needs an array of at least two filters")
        return Filter(op, children=tuple(_parse_filter(child, depth + 1) for child in arg))
    if op in COMPARISONS or op == "IN":
        if not isinstance(arg, dict) or len(arg) != 1:
            raise QueryError(f"{op} needs an object with exactly one field")
        ((name, value),) = arg.items()
        if op == "IN" and not isinstance(value, list):
            raise QueryError("IN needs an array of values")
        return Filter(op, path=_path(name), value=value)
    raise QueryError(f"unknown filter operator {op!r}")


def parse_query(body: bytes) -> Query:
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise QueryError(f"invalid query JSON: {exc}") from None
    except RecursionError:
        raise QueryError("invalid query JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise QueryError("the query must be a JSON object")
    # As Go decodes into typed fields: null is absent, any other value of the wrong type an error.
    raw_filter = _typed(_get_ci(doc, "filter"), dict, "filter must be an object")
    parsed_filter = _parse_filter(raw_filter) if raw_filter else None
    sort: list[SortKey] = []
    for item in _typed(_get_ci(doc, "sort"), list, "sort must be an array") or []:
        if not isinstance(item, dict):
            raise QueryError("each sort entry must be an object")
        order = (_typed(_get_ci(item, "order"), str, "sort order must be a string") or "ASC").upper()
        if order not in ("ASC", "DESC"):
            raise QueryError(f"sort order must be ASC or DESC, not {order!r}")
        sort.append(SortKey(_path(_get_ci(item, "key")), order == "DESC"))
    page = _typed(_get_ci(doc, "page"), dict, "page must be an object") or {}
    limit = _get_ci(page, "limit")
    limit = 0 if limit is None else limit
    token = _typed(_get_ci(page, "token"), str, "page.token must be a string") or "0"
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise QueryError("page.limit must be a non-negative integer")
    # The token is an offset Pillion handed out: a few digits, never a sign or spaces.
    if not token.isascii() or not token.isdigit() or len(token) > 18:
        raise QueryError(f"invalid page token {token!r}")
    return Query(parsed_filter, tuple(sort), limit, int(token))


def _typed(value: Any, kind: type, problem: str) -> Any:
    if value is not None and not isinstance(value, kind):
        raise QueryError(problem)
    return value


_MISSING = object()


def _lookup(value: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _kind(value: Any) -> int:
    """Rank JSON types so that only like compares with like (bool is not a number here)."""
    if value is None:
        return 0
    if isinstance(value, bool):
        return 1
    if isinstance(value, int | float):
        return 2
    if isinstance(value, str):
        return 3
    return 4


def _compare(left: Any, right: Any) -> int | None:
    """-1/0/1, or None when the two cannot be ordered."""
    kind = _kind(left)
    if kind != _kind(right):
        return None
    if kind == 4:
        return 0 if left == right else None
    if left == right:
        return 0
    if kind == 0:
        return 0
    return -1 if left < right else 1


def matches(flt: Filter, value: Any) -> bool:
    if flt.op == "AND":
        return all(matches(child, value) for child in flt.children)
    if flt.op == "OR":
        return any(matches(child, value) for child in flt.children)
    found = _lookup(value, flt.path)
    if found is _MISSING:
        return False
    if flt.op == "IN":
        return any(_compare(found, candidate) == 0 for candidate in flt.value)
    order = _compare(found, flt.value)
    if flt.op == "NEQ":
        return order != 0
    if order is None:
        return False
    return {
        "EQ": order == 0,
        "GT": order > 0,
        "GTE": order >= 0,
        "LT": order < 0,
        "LTE": order <= 0,
    }[flt.op]


def _sort_compare(keys: tuple[SortKey, ...]) -> Any:
    def compare(a: tuple[QueryResult, Any], b: tuple[QueryResult, Any]) -> int:
        for key in keys:
            left, right = _lookup(a[1], key.path), _lookup(b[1], key.path)
            if left is _MISSING or right is _MISSING:
                # Items without the field go last, whatever the direction.
                if left is not right:
                    return 1 if left is _MISSING else -1
                continue
            order = _compare(left, right)
            if order is None:
                order = (_kind(left) > _kind(right)) - (_kind(left) < _kind(right))
            if order:
                return -order if key.descending else order
        return 0

    return cmp_to_key(compare)


def run_query(query: Query, items: Iterable[QueryResult]) -> QueryPage:
    """Filter, sort and page ``items`` (already stripped of expired entries)."""
    selected: list[tuple[QueryResult, Any]] = []
    for item in items:
        try:
            value = json.loads(item.data)
        except (ValueError, RecursionError):  # not JSON, or too deep to read: no field matches
            value = _MISSING
        if query.filter is None or (value is not _MISSING and matches(query.filter, value)):
            selected.append((item, value))
    if query.sort:
        selected.sort(key=_sort_compare(query.sort))
    else:
        selected.sort(key=lambda pair: pair[0].key)
    end = len(selected) if query.limit == 0 else query.offset + query.limit
    page = [item for item, _ in selected[query.offset : end]]
    token = str(end) if end < len(selected) else None
    return QueryPage(page, token)

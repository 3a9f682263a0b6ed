"""The alpha state query (``components.state.query.Query``) as one PostgreSQL statement.

Everything that comes from the request (field names, values, the key prefix, limit and offset) is
a bound parameter; the only text put into the SQL is the store's own validated table and function
names and constant operators. A field is read with ``->`` one name at a time, which, unlike ``#>``,
never indexes into arrays, just as ``run_query`` only descends into objects.

The results match ``run_query``: values compare only with values of the same JSON type (strings
by code point, through the "C" collation), a missing field matches nothing, NEQ matches any
different value, sorting puts items without the field last, and ties go by key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from components.state.query import Filter, Query, QueryError, SortKey

_ORDERING = {"GT": ">", "GTE": ">=", "LT": "<", "LTE": "<="}
_LIVE = "(expires_at IS NULL OR expires_at > now())"


def _json_type(value: Any) -> str:
    """The name ``jsonb_typeof`` gives ``value`` once stored."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _json(value: Any) -> str:
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:
        raise QueryError(f"{value!r} is not a JSON value (NaN and Infinity have no place in JSON)") from None


def _text(field: str) -> str:
    """A JSON string's text, ordered by code point as Python orders str (jsonb would use the
    database's collation)."""
    return f"({field} #>> '{{}}') COLLATE \"C\""


@dataclass(frozen=True, slots=True)
class SQLQuery:
    text: str
    args: tuple[Any, ...]
    limit: int  # 0: no limit; otherwise the statement fetches one row more, to know if a page follows


class _Builder:
    def __init__(self) -> None:
        self.args: list[Any] = []

    def param(self, value: Any, cast: str) -> str:
        self.args.append(value)
        return f"${len(self.args)}::{cast}"

    def field(self, path: tuple[str, ...]) -> str:
        return "(doc" + "".join(f" -> {self.param(name, 'text')}" for name in path) + ")"

    def condition(self, flt: Filter) -> str:
        if flt.op in ("AND", "OR"):
            return "(" + f" {flt.op} ".join(self.condition(child) for child in flt.children) + ")"
        kind = _json_type(flt.value)
        if flt.op in ("GTE", "LTE") and kind in ("null", "array", "object"):
            # These values are only ever equal or not: GTE and LTE mean EQ, GT and LT match nothing.
            return self.condition(Filter("EQ", flt.path, flt.value))
        if flt.op in ("GT", "LT") and kind in ("null", "array", "object"):
            return "FALSE"
        field = self.field(flt.path)
        # A missing field is SQL NULL, so every comparison below is NULL (no match) for it.
        if flt.op == "IN":
            return f"{field} = ANY({self.param([_json(v) for v in flt.value], 'jsonb[]')})"
        if flt.op in ("EQ", "NEQ"):
            # jsonb equality is false between different types and numeric between numbers.
            operator = "=" if flt.op == "EQ" else "<>"
            return f"{field} {operator} {self.param(_json(flt.value), 'jsonb')}"
        operator = _ORDERING[flt.op]
        if kind == "string":
            value = self.param(flt.value, "text")
            return f"(jsonb_typeof({field}) = 'string' AND {_text(field)} {operator} {value})"
        value = self.param(_json(flt.value), "jsonb")
        return f"(jsonb_typeof({field}) = '{kind}' AND {field} {operator} {value})"

    def order(self, key: SortKey) -> list[str]:
        field = self.field(key.path)
        direction = " DESC" if key.descending else ""
        rank = (
            f"CASE jsonb_typeof({field}) WHEN 'null' THEN 0 WHEN 'boolean' THEN 1 "
            "WHEN 'number' THEN 2 WHEN 'string' THEN 3 ELSE 4 END"
        )
        return [
            f"{field} IS NULL",  # missing fields last, whatever the direction
            rank + direction,  # then by type, as run_query orders values of different types
            f"CASE WHEN jsonb_typeof({field}) IN ('boolean', 'number') THEN {field} END{direction}",
            f"CASE WHEN jsonb_typeof({field}) = 'string' THEN {_text(field)} END{direction}",
        ]


def translate(query: Query, table: str, json_function: str, key_prefix: str) -> SQLQuery:
    """``table`` and ``json_function`` are trusted, validated names; all else becomes parameters."""
    sql = _Builder()
    prefix = sql.param(key_prefix, "text")
    where = f" WHERE {sql.condition(query.filter)}" if query.filter is not None else ""
    ordering = [part for key in query.sort for part in sql.order(key)]
    ordering.append('key COLLATE "C"')
    paging = f" OFFSET {sql.param(query.offset, 'bigint')}"
    if query.limit:
        paging = f" LIMIT {sql.param(query.limit + 1, 'bigint')}" + paging
    # OFFSET 0 keeps the planner from folding the subquery into the outer one, which would parse
    # the value once for every reference to ``doc`` instead of once per row.
    text = (
        f"SELECT key, value, etag::text FROM (SELECT key, value, etag, {json_function}(value) AS doc "
        f"FROM {table} WHERE starts_with(key, {prefix}) AND {_LIVE} OFFSET 0) AS live"
        f"{where} ORDER BY {', '.join(ordering)}{paging}"
    )
    return SQLQuery(text, tuple(sql.args), query.limit)

"""Property tests for the parsers that read what callers send (issue 7).

Pure functions, no sidecar: the wire helpers (path parameters, ``metadata.*`` query values, JSON
bodies, stored values), etags, the state query language, metadata values (booleans, durations),
resource YAML and CloudEvent building. Each property says what a parser may answer: a result of a
given shape, or its own error type, never anything else.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from components.metadata import parse_bool, parse_duration
from components.state.base import SetOp
from components.state.query import QueryError, QueryResult, parse_query, run_query
from components.state.redis import RedisStateStore
from runtime.compat import cloudevents, gojson
from runtime.errors import APIError
from runtime.http.state import _save_item
from runtime.http.wire import (
    PathUnescapeError,
    decode_json,
    encode_value,
    path_param,
    query_metadata,
    raw_json,
)
from runtime.observability import traceparent
from runtime.resources.configuration import load_configuration
from runtime.resources.loader import ResourceError, load_components, load_subscriptions

settings.register_profile("pillion", max_examples=150, deadline=None)
settings.load_profile("pillion")

# Text that can travel in a URL or a UTF-8 body: no lone surrogates.
TEXT = st.text(st.characters(exclude_categories=["Cs"]))
JSON_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)


def request(path_params: dict[str, str] | None = None, query: bytes = b"") -> Request:
    return Request(
        {
            "type": "http",
            "method": "GET",
            "path": "/",
            "path_params": path_params or {},
            "query_string": query,
            "headers": [],
        }
    )


def malformed(exc: APIError) -> bool:
    return exc.status == 400 and exc.code == "ERR_MALFORMED_REQUEST"


# --- path parameters and metadata.* query values ---------------------------------------------------


@given(TEXT)
def test_a_percent_encoded_parameter_comes_back_exactly(text: str) -> None:
    # A state key like "../../etc/passwd" or "a/b" is sent as one %-encoded segment and read back
    # as the same text: a key is never a path.
    assert path_param(request({"key": quote(text, safe="")}), "key") == text


@given(st.text())
def test_any_raw_parameter_is_text_or_an_unescape_error(raw: str) -> None:
    try:
        assert isinstance(path_param(request({"key": raw}), "key"), str)
    except PathUnescapeError:
        assert "%" in raw


@given(st.lists(st.tuples(st.one_of(TEXT, TEXT.map("metadata.".__add__)), TEXT), max_size=8))
def test_metadata_query_values_are_the_first_of_each_metadata_name(pairs: list[tuple[str, str]]) -> None:
    expected: dict[str, str] = {}
    for name, value in pairs:
        if name.startswith("metadata."):
            expected.setdefault(name.removeprefix("metadata."), value)
    assert query_metadata(request(query=urlencode(pairs).encode())) == expected


@given(st.binary(max_size=200))
def test_any_query_string_gives_a_map_of_text(raw: bytes) -> None:
    found = query_metadata(request(query=raw))
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in found.items())


# --- JSON bodies and stored values -----------------------------------------------------------------


@given(JSON_VALUES)
def test_a_json_body_decodes_to_what_was_sent(value: Any) -> None:
    assert decode_json(json.dumps(value).encode()) == value


@given(st.binary(max_size=300))
def test_any_body_decodes_or_is_a_malformed_request(body: bytes) -> None:
    try:
        decode_json(body)
    except APIError as exc:
        assert malformed(exc), (exc.code, exc.message)


@given(st.integers(min_value=1, max_value=2000))
def test_deep_json_is_a_malformed_request_not_a_crash(depth: int) -> None:
    body = b"[" * depth + b"]" * depth
    if depth <= gojson.MAX_DEPTH:
        assert encode_value(decode_json(body)) == body
    else:
        with pytest.raises(APIError) as caught:
            decode_json(body)
        assert malformed(caught.value)


@given(st.lists(st.integers(min_value=0xD800, max_value=0xDFFF) | st.integers(0x20, 0x7E), max_size=6))
def test_lone_surrogate_escapes_become_replacement_characters(units: list[int]) -> None:
    # Go decodes a lone surrogate escape as U+FFFD; the result must be storable UTF-8.
    text = "".join(f"\\u{unit:04x}" for unit in units)
    value = decode_json(f'"{text}"'.encode())
    assert isinstance(value, str)
    assert not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    encode_value(value).decode("utf-8")


@given(JSON_VALUES)
def test_a_stored_value_is_compact_sorted_json_and_stable(value: Any) -> None:
    stored = encode_value(value)
    assert json.loads(stored) == value
    assert encode_value(json.loads(stored)) == stored
    assert raw_json(stored) == stored


@given(st.sampled_from(["1e400", "-1e999", "[1e400]", '{"a":1e309}']))
def test_numbers_beyond_float_range_are_refused(text: str) -> None:
    # Python reads them as infinity, which JSON cannot spell; Go refuses to decode them.
    with pytest.raises(APIError) as caught:
        encode_value(decode_json(text.encode()))
    assert malformed(caught.value)


@given(st.binary(max_size=100))
def test_any_stored_bytes_embed_as_json(data: bytes) -> None:
    embedded = raw_json(data)
    decoded = json.loads(embedded, parse_constant=lambda name: pytest.fail(f"{name} in {embedded!r}"))
    if embedded != data:
        assert base64.b64decode(decoded) == data


# --- etags -------------------------------------------------------------------------------------------


@given(JSON_SCALARS | st.lists(JSON_SCALARS, max_size=2))
def test_an_item_etag_is_a_string_or_a_malformed_request(etag: Any) -> None:
    try:
        item = _save_item({"key": "k", "value": 1, "etag": etag}, {})
    except APIError as exc:
        assert malformed(exc)
        assert not isinstance(etag, str) and etag is not None
    else:
        assert item.etag == (etag or None)


@given(st.text() | st.integers().map(str))
def test_a_redis_etag_is_an_int64_or_invalid(etag: str) -> None:
    from components.state.base import ETagInvalid

    try:
        version = RedisStateStore._expected_version(SetOp("k", b"1", etag))
    except ETagInvalid:
        return
    assert -(2**63) <= int(version) < 2**63
    assert int(version) == int(etag)


# --- the state query language ------------------------------------------------------------------------

FIELDS = st.sampled_from(["a", "b", "a.b", "A", "", "a..b", 5])
OPERATORS = st.sampled_from(["EQ", "NEQ", "GT", "GTE", "LT", "LTE", "IN", "AND", "OR", "eq", "XOR"])
FILTERS = st.recursive(
    st.builds(lambda op, f, v: {op: {f: v}}, OPERATORS, FIELDS, JSON_SCALARS | st.lists(JSON_SCALARS)),
    lambda inner: st.builds(lambda op, children: {op: children}, OPERATORS, st.lists(inner, max_size=3)),
    max_leaves=10,
)
QUERIES = st.fixed_dictionaries(
    {},
    optional={
        "filter": FILTERS | JSON_SCALARS,
        "sort": st.lists(
            st.fixed_dictionaries(
                {}, optional={"key": FIELDS, "order": st.sampled_from(["ASC", "DESC", "x", 1])}
            )
        )
        | JSON_SCALARS,
        "page": st.fixed_dictionaries(
            {},
            optional={
                "limit": st.integers(-2, 5) | JSON_SCALARS,
                "token": st.integers(-1, 9).map(str) | JSON_SCALARS,
            },
        )
        | JSON_SCALARS,
    },
)


@given(QUERIES)
def test_a_query_parses_or_is_a_query_error(query: dict[str, Any]) -> None:
    with contextlib.suppress(QueryError):
        parse_query(json.dumps(query).encode())


@given(st.binary(max_size=200) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_any_body_parses_or_is_a_query_error(body: bytes) -> None:
    with contextlib.suppress(QueryError):
        parse_query(body)


@given(st.integers(min_value=1, max_value=3000))
def test_deeply_nested_filters_are_a_query_error(depth: int) -> None:
    body = '{"filter":' + '{"AND":[' * depth + '{"EQ":{"a":1}}' + ',{"EQ":{"b":1}}]}' * depth + "}"
    with contextlib.suppress(QueryError):
        parse_query(body.encode())


VALUES = st.fixed_dictionaries(
    {}, optional={"a": st.integers(-3, 3) | st.sampled_from(["x", "y"]) | st.none()}
)
ITEMS = st.dictionaries(st.text(max_size=4), VALUES, max_size=12)


def results(items: dict[str, Any]) -> list[QueryResult]:
    return [QueryResult(key, json.dumps(value).encode(), "etag") for key, value in items.items()]


@given(ITEMS, st.integers(-3, 3) | st.sampled_from(["x", "y"]))
def test_an_eq_filter_returns_exactly_the_matching_items_in_key_order(
    items: dict[str, Any], wanted: Any
) -> None:
    query = parse_query(json.dumps({"filter": {"EQ": {"a": wanted}}}).encode())
    page = run_query(query, results(items))
    expected = sorted(
        k for k, v in items.items() if "a" in v and type(v["a"]) is type(wanted) and v["a"] == wanted
    )
    assert [r.key for r in page.results] == expected
    assert page.token is None


@given(ITEMS, st.sampled_from(["ASC", "DESC"]))
def test_sorting_orders_the_values_and_keeps_every_item(items: dict[str, Any], order: str) -> None:
    query = parse_query(json.dumps({"sort": [{"key": "a", "order": order}]}).encode())
    page = run_query(query, results(items))
    assert sorted(r.key for r in page.results) == sorted(items)
    numbers = [items[r.key]["a"] for r in page.results if isinstance(items[r.key].get("a"), int)]
    assert numbers == sorted(numbers, reverse=order == "DESC")


@given(ITEMS, st.integers(1, 5))
def test_paging_with_tokens_returns_every_result_once_in_order(items: dict[str, Any], limit: int) -> None:
    everything = [r.key for r in run_query(parse_query(b"{}"), results(items)).results]
    seen: list[str] = []
    token: str | None = None
    for _ in range(len(items) + 2):
        page_spec: dict[str, Any] = {"limit": limit, **({"token": token} if token else {})}
        page = run_query(parse_query(json.dumps({"page": page_spec}).encode()), results(items))
        assert len(page.results) <= limit
        seen += [r.key for r in page.results]
        token = page.token
        if token is None:
            break
    assert seen == everything


# --- metadata values -----------------------------------------------------------------------------------


@given(st.text())
def test_a_bool_is_read_or_refused(text: str) -> None:
    with contextlib.suppress(ValueError):
        assert isinstance(parse_bool(text), bool)


@given(st.sampled_from(["1", "t", "true", "y", "yes", "on"]), st.booleans())
def test_true_spellings_ignore_case(word: str, upper: bool) -> None:
    assert parse_bool(word.upper() if upper else word) is True


@given(st.text())
def test_a_duration_is_read_or_refused(text: str) -> None:
    with contextlib.suppress(ValueError):
        assert isinstance(parse_duration(text), float)


@given(st.integers(0, 100), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
def test_go_durations_add_up(hours: int, minutes: int, seconds: int, millis: int) -> None:
    text = f"{hours}h{minutes}m{seconds}s{millis}ms"
    assert parse_duration(text) == pytest.approx(hours * 3600 + minutes * 60 + seconds + millis / 1000)
    assert parse_duration("-" + text) == pytest.approx(-parse_duration(text))


# --- resource YAML -----------------------------------------------------------------------------------

YAML_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT | st.dates()
YAML_VALUES = st.recursive(
    YAML_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT | st.integers(), inner, max_size=3),
    max_leaves=12,
)
NAMES = st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True)


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually a valid value, else any YAML at all: most documents get far into the loader."""
    return st.one_of(valid, valid, valid, YAML_VALUES)


def document(kind: str, version: st.SearchStrategy[str], spec: dict[str, st.SearchStrategy[Any]]) -> Any:
    return st.fixed_dictionaries(
        {
            "apiVersion": version | YAML_SCALARS,
            "kind": st.just(kind) | YAML_SCALARS,
            "metadata": mostly(
                st.fixed_dictionaries({"name": mostly(NAMES)}, optional={"namespace": YAML_VALUES})
            ),
            "spec": mostly(st.fixed_dictionaries({}, optional=spec)),
        },
        optional={
            "scopes": mostly(st.lists(NAMES)),
            "auth": mostly(st.fixed_dictionaries({"secretStore": NAMES})),
        },
    )


METADATA_ITEMS = st.lists(
    st.fixed_dictionaries(
        {"name": mostly(NAMES)},
        optional={"value": YAML_VALUES, "secretKeyRef": mostly(st.fixed_dictionaries({"name": NAMES}))},
    ),
    max_size=3,
)
COMPONENTS = document(
    "Component",
    st.just("dapr.io/v1alpha1"),
    {
        "type": mostly(
            st.sampled_from(["state.in-memory", "state.sqlite", "pubsub.in-memory", "secretstores.local.env"])
        ),
        "version": mostly(st.just("v1")),
        "metadata": mostly(METADATA_ITEMS),
        "initTimeout": mostly(st.sampled_from(["1s", "500ms", "x"])),
        "ignoreErrors": YAML_SCALARS,
    },
)
SUBSCRIPTIONS = document(
    "Subscription",
    st.sampled_from(["dapr.io/v1alpha1", "dapr.io/v2alpha1"]),
    {
        "pubsubname": mostly(NAMES),
        "topic": mostly(NAMES),
        "route": mostly(st.just("/r")),
        "routes": mostly(
            st.fixed_dictionaries(
                {},
                optional={
                    "rules": mostly(
                        st.lists(st.fixed_dictionaries({"match": mostly(TEXT), "path": mostly(TEXT)}))
                    ),
                    "default": mostly(st.just("/d")),
                },
            )
        ),
        "metadata": YAML_VALUES,
        "deadLetterTopic": YAML_SCALARS,
        "bulkSubscribe": YAML_VALUES,
    },
)
CONFIGURATIONS = document(
    "Configuration",
    st.just("dapr.io/v1alpha1"),
    {
        "secrets": mostly(
            st.fixed_dictionaries(
                {
                    "scopes": mostly(
                        st.lists(
                            st.fixed_dictionaries(
                                {"storeName": mostly(NAMES)},
                                optional={
                                    "defaultAccess": mostly(st.sampled_from(["allow", "deny"])),
                                    "allowedSecrets": mostly(st.lists(NAMES)),
                                    "deniedSecrets": mostly(st.lists(NAMES)),
                                },
                            )
                        )
                    )
                }
            )
        ),
        "api": YAML_VALUES,
    },
)
YAML_TEXTS = st.lists(COMPONENTS | SUBSCRIPTIONS | CONFIGURATIONS | YAML_VALUES, min_size=1, max_size=2).map(
    lambda docs: yaml.safe_dump_all(docs, allow_unicode=True)
) | st.text(max_size=200)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(YAML_TEXTS)
@example(  # a YAML date inside a structured metadata value once crashed the loader
    "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: s}\n"
    "spec: {type: state.in-memory, version: v1, metadata: [{name: x, value: {a: 2020-01-01}}]}\n"
)
def test_any_resource_file_loads_or_is_one_resource_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "r.yaml"
        path.write_text(text, encoding="utf-8")
        for load in (load_components, load_subscriptions):
            try:
                load([Path(folder)], "app")
            except ResourceError as exc:
                assert str(path) in str(exc)
        try:
            load_configuration(path)
        except ResourceError as exc:
            assert str(path) in str(exc)


# --- CloudEvents -----------------------------------------------------------------------------------

CONTENT_TYPES = st.sampled_from(
    [
        "",
        "text/plain",
        "application/json",
        "application/json; charset=utf-8",
        "application/octet-stream",
        "application/xml",
        "application/x-protobuf",
        "image/png",
        "APPLICATION/JSON",
    ]
) | st.text(max_size=20)
OVERRIDES = st.dictionaries(
    st.sampled_from(
        [
            "cloudevent.id",
            "cloudevent.source",
            "cloudevent.type",
            "cloudevent.subject",
            "cloudevent.traceparent",
            "CloudEvent.Id",
            "ttlInSeconds",
            "other",
        ]
    ),
    TEXT,
    max_size=4,
)
BODIES = st.binary(max_size=100) | JSON_VALUES.map(lambda v: json.dumps(v).encode())
REQUIRED = {"id", "source", "type", "specversion", "datacontenttype", "topic", "pubsubname", "time"}


def strict_json(data: bytes) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(name)

    return json.loads(data, parse_constant=refuse)


@given(BODIES, CONTENT_TYPES, OVERRIDES, TEXT, TEXT)
def test_an_envelope_is_valid_json_with_every_required_field(
    body: bytes, content_type: str, metadata: dict[str, str], topic: str, parent: str
) -> None:
    envelope = cloudevents.new_envelope(
        app_id="app",
        topic=topic,
        pubsub="pubsub",
        content_type=content_type,
        data=body,
        traceparent=traceparent.child_traceparent(parent),
        tracestate="",
        metadata=metadata,
    )
    event = strict_json(gojson.encode(envelope))
    assert event.keys() >= REQUIRED
    assert event["specversion"] == "1.0"
    assert (event["topic"], event["pubsubname"]) == (topic, "pubsub")
    assert ("data" in event) != ("data_base64" in event)
    if "data_base64" in event:
        assert base64.b64decode(event["data_base64"]) == body


@given(JSON_VALUES)
def test_a_json_body_travels_as_json_data(value: Any) -> None:
    body = json.dumps(value).encode()
    envelope = cloudevents.new_envelope(
        app_id="app",
        topic="t",
        pubsub="p",
        content_type="application/json",
        data=body,
        traceparent="",
        tracestate="",
        metadata={},
    )
    assert strict_json(gojson.encode(envelope))["data"] == value


@given(BODIES, TEXT)
def test_a_published_cloudevent_is_completed_or_refused(body: bytes, topic: str) -> None:
    try:
        event = cloudevents.from_cloudevent(body, topic=topic, pubsub="p", traceparent="", tracestate="")
    except ValueError:
        return
    decoded = strict_json(gojson.encode(event))
    assert {"source", "type", "specversion", "time"} <= decoded.keys()
    assert (decoded["topic"], decoded["pubsubname"]) == (topic, "p")


@given(JSON_VALUES)
def test_go_marshal_round_trips(value: Any) -> None:
    # Go writes a float like 5.7e16 as the integer 57017311520572150: equal as a number.
    marshalled = gojson.go_marshal(value)
    assert gojson.as_doubles(strict_json(marshalled)) == gojson.as_doubles(value)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_go_numbers_read_back_exactly(number: float) -> None:
    assert float(gojson.go_number(number)) == number


@given(st.sampled_from([math.inf, -math.inf]))
def test_go_marshal_refuses_infinity(number: float) -> None:
    with pytest.raises(ValueError):
        gojson.go_marshal([number])

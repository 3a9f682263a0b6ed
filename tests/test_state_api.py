"""State API conformance: one suite, run against a real sidecar process for every store.

Covers the state API and its errors as docs/openapi.yaml and docs/state.md describe them.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.state_support import SERVICE_FIXTURES, STORES
from tests.support import SidecarProcess, start_sidecar

STORE = "statestore"


@pytest.fixture(scope="module", params=sorted(STORES))
def sidecar(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    kind: str = request.param
    workdir: Path = tmp_path_factory.mktemp(f"state-{kind}")
    service = SERVICE_FIXTURES.get(kind)
    service_url = request.getfixturevalue(service) if service else ""
    proc = start_sidecar(
        workdir,
        resources={"statestore.yaml": STORES[kind](STORE, workdir, service_url)},
        extra_args=["--max-body-size", "64Ki"],
    )
    proc.kind = kind  # type: ignore[attr-defined]
    yield proc
    proc.stop()


@pytest.fixture
def api(sidecar: SidecarProcess) -> Iterator[httpx.Client]:
    with sidecar.client() as client:
        yield client


@pytest.fixture
def key() -> str:
    return f"k-{uuid.uuid4().hex[:12]}"


def save(api: httpx.Client, *items: Any, params: dict[str, str] | None = None) -> httpx.Response:
    return api.post(f"/v1.0/state/{STORE}", json=list(items), params=params)


def etag_of(api: httpx.Client, key: str) -> str:
    response = api.get(f"/v1.0/state/{STORE}/{key}")
    assert response.status_code == 200, response.text
    return response.headers["etag"]


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, object] = response.json()
    assert body["errorCode"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert "Traceback" not in response.text
    return body


# --- reads and writes ------------------------------------------------------------------------


def test_missing_key_is_204_with_empty_body(api: httpx.Client, key: str) -> None:
    response = api.get(f"/v1.0/state/{STORE}/{key}")
    assert response.status_code == 204
    assert response.content == b""
    assert "etag" not in response.headers
    assert "content-type" not in response.headers


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        (123, b"123"),
        (True, b"true"),
        ("hello world", b'"hello world"'),
        ("", b'""'),
        ('{"a":"b"}', b'"{\\"a\\":\\"b\\"}"'),
        ({"z": 1, "a": {"y": [1, 2], "b": None}}, b'{"a":{"b":null,"y":[1,2]},"z":1}'),
        ("héllo ✓", '"héllo ✓"'.encode()),
        (None, b"null"),
    ],
)
def test_values_round_trip_as_json(api: httpx.Client, key: str, value: object, stored: bytes) -> None:
    assert save(api, {"key": key, "value": value}).status_code == 204
    response = api.get(f"/v1.0/state/{STORE}/{key}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == stored
    assert response.headers["etag"]


def test_missing_value_is_stored_as_null(api: httpx.Client, key: str) -> None:
    assert save(api, {"key": key}).status_code == 204
    response = api.get(f"/v1.0/state/{STORE}/{key}")
    assert (response.status_code, response.content) == (200, b"null")


def test_put_saves_too_and_empty_array_is_204(api: httpx.Client, key: str) -> None:
    assert api.put(f"/v1.0/state/{STORE}", json=[{"key": key, "value": 1}]).status_code == 204
    assert api.get(f"/v1.0/state/{STORE}/{key}").content == b"1"
    response = api.post(f"/v1.0/state/{STORE}", content=b"[]")
    assert (response.status_code, response.content) == (204, b"")


def test_field_names_match_case_insensitively(api: httpx.Client, key: str) -> None:
    response = api.post(f"/v1.0/state/{STORE}", content=json.dumps([{"KEY": key, "Value": "v"}]))
    assert response.status_code == 204
    assert api.get(f"/v1.0/state/{STORE}/{key}").content == b'"v"'


def test_save_many_items_then_get_each(api: httpx.Client, key: str) -> None:
    items = [{"key": f"{key}-{i}", "value": i} for i in range(5)]
    assert save(api, *items).status_code == 204
    for i in range(5):
        assert api.get(f"/v1.0/state/{STORE}/{key}-{i}").content == str(i).encode()


def test_escaped_slash_and_plus_in_key(api: httpx.Client, key: str) -> None:
    assert save(api, {"key": f"{key}/a b", "value": "x"}).status_code == 204
    assert api.get(f"/v1.0/state/{STORE}/{key}%2Fa+b").content == b'"x"'
    assert api.get(f"/v1.0/state/{STORE}/{key}%2Fa%20b").content == b'"x"'


def test_delete(api: httpx.Client, key: str) -> None:
    assert api.delete(f"/v1.0/state/{STORE}/{key}").status_code == 204  # never written
    save(api, {"key": key, "value": 1})
    response = api.delete(f"/v1.0/state/{STORE}/{key}")
    assert (response.status_code, response.content) == (204, b"")
    assert api.get(f"/v1.0/state/{STORE}/{key}").status_code == 204


# --- etags and concurrency ---------------------------------------------------------------------


def bad_etag(sidecar: SidecarProcess) -> str:
    # Redis etags are integers; other stores use UUIDs. Either way this one does not match.
    return "9999999" if getattr(sidecar, "kind", "") == "redis" else str(uuid.uuid4())


def test_etag_changes_on_every_write(api: httpx.Client, key: str) -> None:
    save(api, {"key": key, "value": 1})
    first = etag_of(api, key)
    assert save(api, {"key": key, "value": 2, "etag": first}).status_code == 204
    second = etag_of(api, key)
    assert second != first
    response = save(api, {"key": key, "value": 3, "etag": first})
    body = assert_error(response, 409, "ERR_STATE_SAVE")
    assert "possible etag mismatch" in str(body["message"])
    assert api.get(f"/v1.0/state/{STORE}/{key}").content == b"2"


def test_wrong_etag_is_409_and_changes_nothing(api: httpx.Client, sidecar: SidecarProcess, key: str) -> None:
    save(api, {"key": key, "value": "a"})
    etag = etag_of(api, key)
    assert_error(save(api, {"key": key, "value": "b", "etag": bad_etag(sidecar)}), 409, "ERR_STATE_SAVE")
    assert etag_of(api, key) == etag


def test_etag_on_missing_key_is_a_mismatch(api: httpx.Client, sidecar: SidecarProcess, key: str) -> None:
    assert_error(save(api, {"key": key, "value": 1, "etag": bad_etag(sidecar)}), 409, "ERR_STATE_SAVE")
    assert api.get(f"/v1.0/state/{STORE}/{key}").status_code == 204


def test_etag_is_checked_under_last_write_too(api: httpx.Client, sidecar: SidecarProcess, key: str) -> None:
    save(api, {"key": key, "value": 1})
    item = {"key": key, "value": 2, "etag": bad_etag(sidecar), "options": {"concurrency": "last-write"}}
    assert_error(save(api, item), 409, "ERR_STATE_SAVE")


def test_empty_etag_means_no_etag(api: httpx.Client, key: str) -> None:
    save(api, {"key": key, "value": 1})
    assert save(api, {"key": key, "value": 2, "etag": ""}).status_code == 204


def test_etag_must_be_a_string(api: httpx.Client, key: str) -> None:
    assert_error(save(api, {"key": key, "value": 1, "etag": 1}), 400, "ERR_MALFORMED_REQUEST")


def test_first_write_without_etag(api: httpx.Client, key: str) -> None:
    first_write = {"concurrency": "first-write"}
    assert save(api, {"key": key, "value": 1, "options": first_write}).status_code == 204
    assert_error(save(api, {"key": key, "value": 2, "options": first_write}), 409, "ERR_STATE_SAVE")
    assert api.get(f"/v1.0/state/{STORE}/{key}").content == b"1"
    # Not sticky: a plain last-write save without an etag still works afterwards.
    assert save(api, {"key": key, "value": 3}).status_code == 204


def test_first_write_with_etag(api: httpx.Client, key: str) -> None:
    save(api, {"key": key, "value": 1})
    etag = etag_of(api, key)
    first_write = {"concurrency": "first-write"}
    assert save(api, {"key": key, "value": 2, "etag": etag, "options": first_write}).status_code == 204
    assert etag_of(api, key) != etag
    assert_error(
        save(api, {"key": key, "value": 3, "etag": etag, "options": first_write}), 409, "ERR_STATE_SAVE"
    )


def test_unknown_concurrency_or_consistency_is_500(api: httpx.Client, key: str) -> None:
    body = assert_error(
        save(api, {"key": key, "value": 1, "options": {"concurrency": "x"}}), 500, "ERR_STATE_SAVE"
    )
    assert "unrecognized concurrency model 'x'" in str(body["message"])
    assert_error(save(api, {"key": key, "value": 1, "options": {"consistency": "y"}}), 500, "ERR_STATE_SAVE")
    consistent = {"concurrency": "last-write", "consistency": "strong"}
    assert save(api, {"key": key, "value": 1, "options": consistent}).status_code == 204


def test_bad_item_in_a_batch_writes_nothing(api: httpx.Client, key: str) -> None:
    response = save(
        api,
        {"key": f"{key}-ok", "value": 1},
        {"key": f"{key}-bad", "value": 1, "metadata": {"ttlInSeconds": "x"}},
    )
    assert_error(response, 500, "ERR_STATE_SAVE")
    assert api.get(f"/v1.0/state/{STORE}/{key}-ok").status_code == 204


def test_delete_with_etag(api: httpx.Client, sidecar: SidecarProcess, key: str) -> None:
    save(api, {"key": key, "value": 1})
    etag = etag_of(api, key)
    response = api.delete(f"/v1.0/state/{STORE}/{key}", headers={"If-Match": bad_etag(sidecar)})
    body = assert_error(response, 409, "ERR_STATE_DELETE")
    assert "possible etag mismatch" in str(body["message"])
    assert api.delete(f"/v1.0/state/{STORE}/{key}", headers={"If-Match": etag}).status_code == 204
    assert api.get(f"/v1.0/state/{STORE}/{key}").status_code == 204
    # An etag on a key that no longer exists is a mismatch; an empty If-Match is no etag.
    assert_error(
        api.delete(f"/v1.0/state/{STORE}/{key}", headers={"If-Match": etag}), 409, "ERR_STATE_DELETE"
    )
    assert api.delete(f"/v1.0/state/{STORE}/{key}", headers={"If-Match": ""}).status_code == 204


def test_delete_with_bad_option_is_500(api: httpx.Client, key: str) -> None:
    assert_error(api.delete(f"/v1.0/state/{STORE}/{key}?concurrency=z"), 500, "ERR_STATE_DELETE")


# --- bulk get ------------------------------------------------------------------------------


def test_bulk_get(api: httpx.Client, key: str) -> None:
    save(api, {"key": f"{key}-1", "value": {"n": 1}}, {"key": f"{key}-2", "value": "two"})
    keys = [f"{key}-2", f"{key}-missing", f"{key}-1"]
    response = api.post(f"/v1.0/state/{STORE}/bulk", json={"keys": keys, "parallelism": 10})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    items = response.json()
    assert [i["key"] for i in items] == keys
    assert items[0]["data"] == "two" and items[0]["etag"]
    assert items[1] == {"key": f"{key}-missing"}
    assert items[2]["data"] == {"n": 1}
    assert items[0]["etag"] == etag_of(api, f"{key}-2")


def test_bulk_get_with_no_keys(api: httpx.Client) -> None:
    bodies: list[dict[str, Any]] = [{"keys": []}, {}]
    for body in bodies:
        response = api.put(f"/v1.0/state/{STORE}/bulk", json=body)
        assert (response.status_code, response.json()) == (200, [])


def test_bulk_get_bad_body(api: httpx.Client) -> None:
    assert_error(api.post(f"/v1.0/state/{STORE}/bulk", content=b"[1]"), 400, "ERR_MALFORMED_REQUEST")
    assert_error(api.post(f"/v1.0/state/{STORE}/bulk", json={"keys": "a"}), 400, "ERR_MALFORMED_REQUEST")


# --- transactions ------------------------------------------------------------------------------


def transact(api: httpx.Client, ops: list[Any], **extra: object) -> httpx.Response:
    return api.post(f"/v1.0/state/{STORE}/transaction", json={"operations": ops, **extra})


def test_transaction_applies_in_order(api: httpx.Client, key: str) -> None:
    save(api, {"key": f"{key}-1", "value": "value1"})
    ops = [
        {"operation": "delete", "request": {"key": f"{key}-1"}},
        {"operation": "upsert", "request": {"key": f"{key}-2", "value": "value2"}},
        {"operation": "delete", "request": {"key": f"{key}-2"}},
        {"operation": "upsert", "request": {"key": f"{key}-3", "value": "value3"}},
        {"operation": "delete", "request": {"key": f"{key}-never-written"}},
    ]
    response = transact(api, ops, metadata=None)
    assert (response.status_code, response.content) == (204, b"")
    assert api.get(f"/v1.0/state/{STORE}/{key}-1").status_code == 204
    assert api.get(f"/v1.0/state/{STORE}/{key}-2").status_code == 204
    assert api.get(f"/v1.0/state/{STORE}/{key}-3").content == b'"value3"'


def test_transaction_with_one_bad_etag_writes_nothing(
    api: httpx.Client, sidecar: SidecarProcess, key: str
) -> None:
    save(api, {"key": f"{key}-a", "value": "old"}, {"key": f"{key}-b", "value": "old"})
    good = etag_of(api, f"{key}-a")
    ops = [
        {"operation": "upsert", "request": {"key": f"{key}-a", "value": "new", "etag": good}},
        {"operation": "upsert", "request": {"key": f"{key}-c", "value": "new"}},
        {"operation": "delete", "request": {"key": f"{key}-b", "etag": bad_etag(sidecar)}},
    ]
    assert_error(transact(api, ops), 500, "ERR_STATE_TRANSACTION")
    assert api.get(f"/v1.0/state/{STORE}/{key}-a").content == b'"old"'
    assert etag_of(api, f"{key}-a") == good
    assert api.get(f"/v1.0/state/{STORE}/{key}-b").content == b'"old"'
    assert api.get(f"/v1.0/state/{STORE}/{key}-c").status_code == 204


def test_transaction_etag_sees_earlier_operations(api: httpx.Client, key: str) -> None:
    save(api, {"key": key, "value": 1})
    etag = etag_of(api, key)
    ops = [
        {"operation": "upsert", "request": {"key": key, "value": 2, "etag": etag}},
        {"operation": "upsert", "request": {"key": key, "value": 3, "etag": etag}},
    ]
    assert_error(transact(api, ops), 500, "ERR_STATE_TRANSACTION")
    assert api.get(f"/v1.0/state/{STORE}/{key}").content == b"1"


def test_transaction_errors(api: httpx.Client, key: str) -> None:
    assert transact(api, []).status_code == 204
    assert_error(
        transact(api, [{"operation": "merge", "request": {"key": key}}]),
        400,
        "ERR_NOT_SUPPORTED_STATE_OPERATION",
    )
    assert_error(api.post(f"/v1.0/state/{STORE}/transaction", content=b"{"), 400, "ERR_MALFORMED_REQUEST")
    bad_key = [{"operation": "upsert", "request": {"key": "a||b", "value": 1}}]
    assert_error(transact(api, bad_key), 400, "ERR_MALFORMED_REQUEST")


def test_transaction_query_metadata_sets_ttl(api: httpx.Client, key: str) -> None:
    ops = [{"operation": "upsert", "request": {"key": key, "value": 1}}]
    response = api.post(
        f"/v1.0/state/{STORE}/transaction?metadata.ttlInSeconds=3600", json={"operations": ops}
    )
    assert response.status_code == 204
    assert "metadata.ttlexpiretime" in api.get(f"/v1.0/state/{STORE}/{key}").headers


# --- TTL ---------------------------------------------------------------------------------------


def expire_time(response: httpx.Response) -> datetime:
    return datetime.strptime(response.headers["metadata.ttlExpireTime"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=UTC
    )


def test_ttl_must_be_an_integer(api: httpx.Client, key: str) -> None:
    response = save(api, {"key": key, "value": 1, "metadata": {"ttlInSeconds": "foo"}})
    assert_error(response, 500, "ERR_STATE_SAVE")


def test_ttl_expires_the_key(api: httpx.Client, key: str) -> None:
    assert save(api, {"key": key, "value": 1, "metadata": {"ttlInSeconds": "1"}}).status_code == 204
    assert api.get(f"/v1.0/state/{STORE}/{key}").status_code == 200
    deadline = time.monotonic() + 3
    while api.get(f"/v1.0/state/{STORE}/{key}").status_code != 204:
        assert time.monotonic() < deadline, "the key outlived its TTL"
        time.sleep(0.1)
    bulk = api.post(f"/v1.0/state/{STORE}/bulk", json={"keys": [key]}).json()
    assert bulk == [{"key": key}]


def test_ttl_expire_time_is_reported(api: httpx.Client, key: str) -> None:
    save(api, {"key": key, "value": 1})
    assert "metadata.ttlExpireTime" not in api.get(f"/v1.0/state/{STORE}/{key}").headers
    save(api, {"key": key, "value": 1, "metadata": {"ttlInSeconds": "3600"}})
    response = api.get(f"/v1.0/state/{STORE}/{key}")
    expected = datetime.now(UTC) + timedelta(hours=1)
    assert abs((expire_time(response) - expected).total_seconds()) < 600
    bulk = api.post(f"/v1.0/state/{STORE}/bulk", json={"keys": [key]}).json()
    assert bulk[0]["metadata"]["ttlExpireTime"] == response.headers["metadata.ttlExpireTime"]


def test_ttl_is_cleared_by_minus_one_and_by_a_plain_save(api: httpx.Client, key: str) -> None:
    for clear in ({"metadata": {"ttlInSeconds": "-1"}}, {}):
        save(api, {"key": key, "value": 1, "metadata": {"ttlInSeconds": "1"}})
        save(api, {"key": key, "value": 2, **clear})
        assert "metadata.ttlExpireTime" not in api.get(f"/v1.0/state/{STORE}/{key}").headers
    time.sleep(1.3)
    assert api.get(f"/v1.0/state/{STORE}/{key}").content == b"2"


def test_query_metadata_overrides_item_metadata(api: httpx.Client, key: str) -> None:
    item = {"key": key, "value": 1, "metadata": {"ttlInSeconds": "-1"}}
    assert save(api, item, params={"metadata.ttlInSeconds": "3600"}).status_code == 204
    assert "metadata.ttlExpireTime" in api.get(f"/v1.0/state/{STORE}/{key}").headers


# --- malformed requests and routing ----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b'{"key":"a"}',
        b'[{"key":"a",}]',
        b"[1]",
        b'[{"key":1}]',
        b"[NaN]",
        b'[{"key":"a","metadata":{"ttlInSeconds":5}}]',
        b'[{"key":"a","options":[]}]',
    ],
)
def test_malformed_save_bodies_are_400(api: httpx.Client, body: bytes) -> None:
    assert_error(api.post(f"/v1.0/state/{STORE}", content=body), 400, "ERR_MALFORMED_REQUEST")


def test_missing_key_field(api: httpx.Client) -> None:
    body = assert_error(api.post(f"/v1.0/state/{STORE}", content=b"[{}]"), 400, "ERR_MALFORMED_REQUEST")
    assert body["message"] == '"key" is a required field'


def test_double_pipe_in_key_is_rejected(api: httpx.Client) -> None:
    for response in (
        save(api, {"key": "a||b", "value": 1}),
        api.get(f"/v1.0/state/{STORE}/a||b"),
        api.delete(f"/v1.0/state/{STORE}/a||b"),
        api.post(f"/v1.0/state/{STORE}/bulk", json={"keys": ["a||b"]}),
    ):
        body = assert_error(response, 400, "ERR_MALFORMED_REQUEST")
        assert "input key/keyPrefix 'a||b' can't contain '||'" in str(body["message"])
        details = body["details"]
        assert isinstance(details, list)
        assert {d["@type"].rsplit(".", 1)[1] for d in details} == {"ErrorInfo", "ResourceInfo", "BadRequest"}
        assert details[0]["reason"] == "DAPR_STATE_ILLEGAL_KEY"


def test_unknown_store(api: httpx.Client, key: str) -> None:
    for response in (
        api.get(f"/v1.0/state/nope/{key}"),
        api.post("/v1.0/state/nope", json=[{"key": key}]),
        api.delete(f"/v1.0/state/nope/{key}"),
        api.post("/v1.0/state/nope/bulk", json={"keys": [key]}),
        api.post("/v1.0/state/nope/transaction", json={"operations": []}),
        api.post("/v1.0-alpha1/state/nope/query", json={}),
    ):
        body = assert_error(response, 400, "ERR_STATE_STORE_NOT_FOUND")
        assert body["message"] == "state store nope is not found"
        assert body["details"] == [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "domain": "dapr.io",
                "metadata": {"appID": "testapp"},
                "reason": "DAPR_STATE_NOT_FOUND",
            }
        ]


def test_body_over_the_size_limit(api: httpx.Client, key: str) -> None:
    value = "x" * (64 * 1024)
    response = save(api, {"key": key, "value": value})
    assert_error(response, 413, "ERR_BODY_READ")
    assert api.get(f"/v1.0/state/{STORE}/{key}").status_code == 204

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while streaming
        yield b'[{"key":"' + key.encode() + b'","value":"'
        for _ in range(80):
            yield b"y" * 1024
        yield b'"}]'

    assert_error(api.post(f"/v1.0/state/{STORE}", content=chunks()), 413, "ERR_BODY_READ")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PATCH", f"/v1.0/state/{STORE}"),
        ("GET", f"/v1.0/state/{STORE}"),
        ("POST", f"/v1.0/state/{STORE}/somekey"),
        ("GET", "/v1.0/unknown/route"),
        ("GET", f"/v1.0/publishx/{STORE}"),
        ("DELETE", "/v1.0/metadata"),
    ],
)
def test_unknown_paths_and_methods_fall_back_to_invocation(api: httpx.Client, method: str, path: str) -> None:
    body = assert_error(api.request(method, path), 404, "ERR_DIRECT_INVOKE")
    assert body["message"] == "failed getting app id either from the URL path or the header dapr-app-id"


def test_path_cleaning(api: httpx.Client, key: str) -> None:
    save(api, {"key": key, "value": 7})
    assert api.get(f"/v1.0//state///{STORE}/{key}/").content == b"7"


def test_broken_percent_escape_is_plain_400(api: httpx.Client) -> None:
    response = api.get(f"/v1.0/state/{STORE}/bad%zzkey")
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/plain")


# --- query ---------------------------------------------------------------------------------


def test_query(api: httpx.Client, sidecar: SidecarProcess, key: str) -> None:
    people = [
        {"key": f"{key}-1", "value": {"name": "ann", "age": 31, "address": {"city": "Oslo"}}},
        {"key": f"{key}-2", "value": {"name": "bob", "age": 25, "address": {"city": "Rome"}}},
        {"key": f"{key}-3", "value": {"name": "cid", "age": 40, "address": {"city": "Oslo"}}},
    ]
    save(api, *people)
    query: dict[str, Any] = {
        "filter": {"AND": [{"EQ": {"address.city": "Oslo"}}, {"IN": {"name": ["ann", "cid", "zed"]}}]},
        "sort": [{"key": "age", "order": "DESC"}],
        "page": {"limit": 1},
    }
    url = f"/v1.0-alpha1/state/{STORE}/query"
    response = api.post(url, json=query)
    if getattr(sidecar, "kind", "") == "redis":
        body = assert_error(response, 500, "ERR_STATE_STORE_NOT_SUPPORTED")
        assert body["message"] == "state store does not support querying"
        return
    assert response.status_code == 200, response.text
    first = response.json()
    assert [r["key"] for r in first["results"]] == [f"{key}-3"]
    assert first["results"][0]["data"]["age"] == 40 and first["results"][0]["etag"]
    query["page"] = {"limit": 1, "token": first["token"]}
    second = api.post(url, json=query).json()
    assert [r["key"] for r in second["results"]] == [f"{key}-1"]
    assert "token" not in second
    nothing = api.post(url, json={"filter": {"EQ": {"name": f"nobody-{key}"}}})
    assert (nothing.status_code, nothing.content) == (204, b"")
    ranged = api.post(
        url, json={"filter": {"AND": [{"GT": {"age": 26}}, {"LTE": {"age": 40}}, {"NEQ": {"name": "cid"}}]}}
    ).json()
    assert [r["key"] for r in ranged["results"] if r["key"].startswith(key)] == [f"{key}-1"]
    assert_error(api.post(url, json={"filter": {"LIKE": {"a": 1}}}), 500, "ERR_STATE_QUERY")

"""``state.postgresql`` specifics, through real sidecars and checked against the raw tables.

The behaviour every store shares is covered by tests/test_state_api.py; these tests cover what only
PostgreSQL has: Dapr v2's table layout, the periodic sweep of expired rows, the query API in SQL
(against the Python evaluator, and against injection), sidecars sharing one table, concurrent
start-up migrations and start-up failures. Everything runs in a private database whose collation
(ICU en-US) orders "apple" before "Banana", unlike Python, so string ordering is really tested.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.state.query import QueryResult, parse_query, run_query
from tests.postgres_support import fetch, private_database
from tests.state_support import component
from tests.support import SidecarProcess, free_port, run_sidecar_to_exit, start_sidecar, write_resources

APP_ID = "testapp"
PREFIX = f"{APP_ID}||"  # keyPrefix appid, the default
STORE = "pgstore"  # default tables: state and dapr_metadata; a fast sweep
NO_SWEEP = "nosweep"  # tablePrefix nosweep_, sweep off
ORACLE = "oracle"  # table oracle_state: only the data the query comparison reads
SWEEP_INTERVAL = "300ms"


@pytest.fixture(scope="module")
def database(postgres_url: str) -> Iterator[str]:
    options = "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
    with private_database(postgres_url, options) as url:
        yield url


def stores(database: str) -> dict[str, str]:
    return {
        f"{STORE}.yaml": component(
            STORE, "state.postgresql", {"connectionString": database, "cleanupInterval": SWEEP_INTERVAL}
        ),
        f"{NO_SWEEP}.yaml": component(
            NO_SWEEP,
            "state.postgresql",
            {"connectionString": database, "tablePrefix": "nosweep_", "cleanupInterval": "0"},
        ),
        f"{ORACLE}.yaml": component(
            ORACLE, "state.postgresql", {"connectionString": database, "tableName": "oracle_state"}
        ),
    }


@pytest.fixture(scope="module")
def sidecar(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    proc = start_sidecar(tmp_path_factory.mktemp("state-pg"), app_id=APP_ID, resources=stores(database))
    yield proc
    proc.stop()


@pytest.fixture
def api(sidecar: SidecarProcess) -> Iterator[httpx.Client]:
    with sidecar.client() as client:
        yield client


@pytest.fixture
def key() -> str:
    return f"pg-{uuid.uuid4().hex[:12]}"


def save(api: httpx.Client, *items: dict[str, Any], store: str = STORE) -> httpx.Response:
    return api.post(f"/v1.0/state/{store}", json=list(items))


def query(api: httpx.Client, body: dict[str, Any], store: str = STORE) -> httpx.Response:
    return api.post(f"/v1.0-alpha1/state/{store}/query", json=body)


def raw_row(database: str, key: str, table: str = "state") -> dict[str, Any] | None:
    rows = fetch(database, f"SELECT * FROM {table} WHERE key = $1", PREFIX + key)
    return dict(rows[0]) if rows else None


# --- layout -------------------------------------------------------------------------------------


def test_features(api: httpx.Client) -> None:
    components = {c["name"]: c for c in api.get("/v1.0/metadata").json()["components"]}
    assert components[STORE]["capabilities"] == ["ACTOR", "ETAG", "QUERY_API", "TRANSACTIONAL", "TTL"]


def test_tables_have_dapr_v2_layout(api: httpx.Client, database: str) -> None:
    columns = fetch(
        database,
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = 'state' ORDER BY ordinal_position",
    )
    assert [(c[0], c[1]) for c in columns] == [
        ("key", "text"),
        ("value", "bytea"),
        ("etag", "uuid"),
        ("created_at", "timestamp with time zone"),
        ("updated_at", "timestamp with time zone"),
        ("expires_at", "timestamp with time zone"),
    ]
    indexes = fetch(database, "SELECT indexdef FROM pg_indexes WHERE tablename = 'state'")
    assert any("(expires_at)" in row[0] for row in indexes)
    rows = fetch(database, "SELECT key, value FROM dapr_metadata WHERE key LIKE 'migrations-%'")
    levels = {row["key"]: row["value"] for row in rows}
    # daprd's v2 keys: the table prefix follows; "oracle_state" and "nosweep_state" have one too.
    assert levels == {
        "migrations-state-v2-": "1",
        "migrations-state-v2-nosweep_": "1",
        "migrations-state-v2-oracle_": "1",
    }


def test_rows_hold_the_value_bytes_and_a_uuid_etag(api: httpx.Client, database: str, key: str) -> None:
    assert (
        save(api, {"key": key, "value": {"a": "é"}, "metadata": {"ttlInSeconds": "100"}}).status_code == 204
    )
    response = api.get(f"/v1.0/state/{STORE}/{key}")
    row = raw_row(database, key)
    assert row is not None
    assert row["value"] == response.content == '{"a":"é"}'.encode()
    assert str(row["etag"]) == response.headers["etag"]
    assert row["updated_at"] is None and row["expires_at"] is not None
    assert save(api, {"key": key, "value": 2}).status_code == 204
    row = raw_row(database, key)
    assert row is not None
    assert row["value"] == b"2" and row["expires_at"] is None and row["updated_at"] is not None
    assert str(row["etag"]) != response.headers["etag"]


def test_rows_written_by_daprd_read_and_update(api: httpx.Client, database: str, key: str) -> None:
    # The statement daprd v2 runs for a save without TTL.
    fetch(
        database,
        "INSERT INTO state (key, value, etag, expires_at) VALUES ($1, $2, gen_random_uuid(), NULL)",
        PREFIX + key,
        b'{"from":"daprd"}',
    )
    response = api.get(f"/v1.0/state/{STORE}/{key}")
    row = raw_row(database, key)
    assert row is not None
    assert response.json() == {"from": "daprd"} and response.headers["etag"] == str(row["etag"])
    updated = save(api, {"key": key, "value": "pillion", "etag": response.headers["etag"]})
    assert updated.status_code == 204


def test_an_etag_that_is_not_a_uuid_is_400(api: httpx.Client, key: str) -> None:
    save(api, {"key": key, "value": 1})
    response = save(api, {"key": key, "value": 2, "etag": "1"})
    assert (response.status_code, response.json()["errorCode"]) == (400, "ERR_STATE_SAVE")
    assert "UUID" in response.json()["message"]
    deleted = api.delete(f"/v1.0/state/{STORE}/{key}", headers={"If-Match": "x'; DROP TABLE state; --"})
    assert (deleted.status_code, deleted.json()["errorCode"]) == (400, "ERR_STATE_DELETE")
    assert api.get(f"/v1.0/state/{STORE}/{key}").content == b"1"


@pytest.mark.parametrize("bad", ["nul\x00key", "k" * 9 * 1024], ids=["nul", "9kib"])
def test_a_key_postgresql_cannot_hold_is_400_before_the_store_is_asked(
    sidecar: SidecarProcess, api: httpx.Client, bad: str
) -> None:
    """PostgreSQL text has no NUL and its index no room for 9 KiB: every operation answers 400
    ERR_MALFORMED_REQUEST (as for any illegal key), and no store error is counted."""
    quoted = quote(bad, safe="")
    answers = [
        save(api, {"key": bad, "value": 1}),
        api.get(f"/v1.0/state/{STORE}/{quoted}"),
        api.delete(f"/v1.0/state/{STORE}/{quoted}"),
        api.post(f"/v1.0/state/{STORE}/bulk", json={"keys": ["fine", bad]}),
        api.post(
            f"/v1.0/state/{STORE}/transaction",
            json={"operations": [{"operation": "upsert", "request": {"key": bad, "value": 1}}]},
        ),
    ]
    for answer in answers:
        assert (answer.status_code, answer.json()["errorCode"]) == (400, "ERR_MALFORMED_REQUEST"), answer.text
        assert "state store holds keys" in answer.json()["message"] or "NUL" in answer.json()["message"]
    longest = "k" * (2600 - len(f"{APP_ID}||"))
    assert save(api, {"key": longest, "value": 2}).status_code == 204
    assert api.get(f"/v1.0/state/{STORE}/{longest}").content == b"2"
    assert "Traceback" not in sidecar.log()


# --- TTL sweep ----------------------------------------------------------------------------------


def test_the_sweep_deletes_expired_rows(api: httpx.Client, database: str, key: str) -> None:
    for store in (STORE, NO_SWEEP):
        assert (
            save(api, {"key": key, "value": 1, "metadata": {"ttlInSeconds": "1"}}, store=store).status_code
            == 204
        )
    assert raw_row(database, key) is not None
    deadline = time.monotonic() + 10
    while raw_row(database, key) is not None:
        assert time.monotonic() < deadline, "the sweep did not delete the expired row"
        time.sleep(0.1)
    swept = fetch(database, "SELECT value FROM dapr_metadata WHERE key = 'pillion-last-cleanup-state'")
    assert len(swept) == 1
    # With cleanupInterval 0 the row stays, but it reads as missing.
    assert raw_row(database, key, "nosweep_state") is not None
    assert api.get(f"/v1.0/state/{NO_SWEEP}/{key}").status_code == 204


def test_first_write_replaces_an_expired_row_the_sweep_has_not_deleted(
    api: httpx.Client, database: str, key: str
) -> None:
    save(api, {"key": key, "value": 1, "metadata": {"ttlInSeconds": "1"}}, store=NO_SWEEP)
    time.sleep(1.1)
    first_write = {"key": key, "value": 2, "options": {"concurrency": "first-write"}}
    assert save(api, first_write, store=NO_SWEEP).status_code == 204
    assert save(api, first_write, store=NO_SWEEP).status_code == 409
    assert api.get(f"/v1.0/state/{NO_SWEEP}/{key}").content == b"2"


# --- query --------------------------------------------------------------------------------------

# Values of every JSON type at the top level and under the fields the queries read; "arr" is an
# array in some items and an object with the key "0" in another, so indexing would show.
ORACLE_DATA: dict[str, Any] = {
    "d01": {"n": 1, "s": "apple", "b": True, "o": {"x": 1}, "arr": [1, 2]},
    "d02": {"n": 2.5, "s": "Banana", "b": False, "o": {"x": "1"}, "arr": [1, 2], "z": None},
    "d03": {"n": -3, "s": "cherry", "o": {"x": [1]}, "arr": {"0": 7}},
    "d04": {"n": "2", "s": "été", "b": 1, "z": 0},
    "d05": {"n": None, "s": "", "o": [], "nested": {"deep": {"er": 5}}},
    "d06": {"n": 10**20, "s": "Zebra", "b": "true", "o": {"x": 1, "y": 2}},
    "d07": {"s": "a'b\"c", "n": 0},
    "d08": [1, 2, 3],
    "d09": "just a string",
    "d10": 42,
    "d11": None,
    "d12": {"n": 1.0, "s": "apple", "b": True, "arr": [2, 1], "nested": {"deep": 5}},
    "d13": {"n": 7, "s": "apple pie", "o": {"x": {"y": 1}}, "nested": {"deep": {"er": "5"}}},
}
PATHS = ["n", "s", "b", "o", "o.x", "arr", "arr.0", "z", "nested.deep.er", "missing"]
VALUES: list[Any] = [
    None, True, False, 0, 1, 1.0, 2, -3, 2.5, 10**20, "", "2", "apple", "Banana", "banana", "été",
    "a'b\"c", "true", [], [1, 2], [2, 1], {"x": 1}, {"x": "1"}, 5, "5",
]  # fmt: skip

comparisons = st.builds(
    lambda op, path, value: {op: {path: value}},
    st.sampled_from(["EQ", "NEQ", "GT", "GTE", "LT", "LTE"]),
    st.sampled_from(PATHS),
    st.sampled_from(VALUES),
)
memberships = st.builds(
    lambda path, values: {"IN": {path: values}},
    st.sampled_from(PATHS),
    st.lists(st.sampled_from(VALUES), max_size=3),
)
filters = st.recursive(
    comparisons | memberships,
    lambda children: st.builds(
        lambda op, items: {op: items},
        st.sampled_from(["AND", "OR"]),
        st.lists(children, min_size=2, max_size=3),
    ),
    max_leaves=5,
)
sorts = st.lists(
    st.builds(
        lambda path, order: {"key": path, "order": order},
        st.sampled_from(PATHS),
        st.sampled_from(["ASC", "DESC"]),
    ),
    max_size=2,
)
pages = st.builds(
    lambda limit, offset: {"limit": limit, "token": str(offset)} if offset else {"limit": limit},
    st.integers(0, 5),
    st.integers(0, 6),
)
queries = st.builds(
    lambda flt, sort, page: {k: v for k, v in (("filter", flt), ("sort", sort), ("page", page)) if v},
    st.none() | filters,
    sorts,
    pages,
)


@pytest.fixture(scope="module")
def oracle(sidecar: SidecarProcess) -> dict[str, Any]:
    with sidecar.client() as client:
        assert (
            save(client, *({"key": k, "value": v} for k, v in ORACLE_DATA.items()), store=ORACLE).status_code
            == 204
        )
    return ORACLE_DATA


def expected_page(body: dict[str, Any]) -> tuple[list[str], str | None]:
    items = [QueryResult(k, json.dumps(v).encode()) for k, v in sorted(ORACLE_DATA.items())]
    page = run_query(parse_query(json.dumps(body).encode()), items)
    return [r.key for r in page.results], page.token


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=queries)
def test_queries_match_the_python_evaluator(
    api: httpx.Client, oracle: dict[str, Any], body: dict[str, Any]
) -> None:
    response = query(api, body, store=ORACLE)
    keys, token = expected_page(body)
    if not keys:
        assert response.status_code == 204, response.text
        return
    assert response.status_code == 200, response.text
    got = response.json()
    assert ([r["key"] for r in got["results"]], got.get("token")) == (keys, token)
    assert all(r["data"] == ORACLE_DATA[r["key"]] and r["etag"] for r in got["results"])


def test_string_order_is_by_code_point_whatever_the_collation(
    api: httpx.Client, oracle: dict[str, Any]
) -> None:
    body = {"filter": {"LT": {"s": "apple"}}, "sort": [{"key": "s"}]}
    assert [r["key"] for r in query(api, body, store=ORACLE).json()["results"]] == [
        "d05",
        "d02",
        "d06",
        "d07",
    ]


INJECTIONS = [
    "'; DROP TABLE state; --",
    '"); DROP TABLE dapr_metadata; --',
    "a' OR '1'='1",
    "$1",
    "x\\' OR 1=1 --",
    "}'::jsonb) OR TRUE --",
]


@pytest.mark.parametrize("attack", INJECTIONS)
def test_query_injection_changes_nothing(api: httpx.Client, database: str, key: str, attack: str) -> None:
    run = uuid.uuid4().hex
    assert (
        save(
            api,
            {"key": f"{key}-hit", "value": {"run": run, attack: attack, "v": attack}},
            {"key": f"{key}-miss", "value": {"run": run, "v": "other"}},
        ).status_code
        == 204
    )
    ours = {"EQ": {"run": run}}
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"AND": [ours, {"EQ": {attack: attack}}]}, [f"{key}-hit"]),
        ({"AND": [ours, {"EQ": {"v": attack}}]}, [f"{key}-hit"]),
        ({"AND": [ours, {"NEQ": {"v": attack}}]}, [f"{key}-miss"]),
        ({"AND": [ours, {"GTE": {"v": attack}}, {"LTE": {"v": attack}}]}, [f"{key}-hit"]),
        ({"AND": [ours, {"IN": {"v": [attack, 1]}}]}, [f"{key}-hit"]),
        ({"OR": [{"EQ": {f"{attack}.x": 1}}, {"EQ": {"v": f"{attack}{run}"}}]}, []),
    ]
    for flt, expected in cases:
        response = query(
            api, {"filter": flt, "sort": [{"key": attack}, {"key": f"v.{attack}", "order": "DESC"}]}
        )
        found = [r["key"] for r in response.json()["results"]] if response.status_code == 200 else []
        assert response.status_code in (200, 204), response.text
        assert found == expected, flt
    tables = {
        row[0] for row in fetch(database, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert {"state", "dapr_metadata", "nosweep_state", "oracle_state"} <= tables
    assert api.get(f"/v1.0/state/{STORE}/{key}-miss").json() == {"run": run, "v": "other"}


def test_keys_with_like_wildcards_do_not_widen_the_prefix(tmp_path: Path, database: str) -> None:
    # keyPrefix is a literal; "%" and "_" in it must not match other keys.
    store = component(
        STORE, "state.postgresql", {"connectionString": database, "keyPrefix": "p%_", "cleanupInterval": "0"}
    )
    other = start_sidecar(tmp_path, app_id=APP_ID, resources={"store.yaml": store})
    try:
        with other.client() as client:
            run = uuid.uuid4().hex
            assert save(client, {"key": "k", "value": {"run": run}}).status_code == 204
            fetch(
                database,
                "INSERT INTO state (key, value) VALUES ('pXY||k', $1)",
                json.dumps({"run": run}).encode(),
            )
            found = query(client, {"filter": {"EQ": {"run": run}}}).json()["results"]
            assert [r["key"] for r in found] == ["k"]
    finally:
        other.stop()


# --- several sidecars ---------------------------------------------------------------------------


def test_two_sidecars_share_one_table(api: httpx.Client, database: str, tmp_path: Path, key: str) -> None:
    other = start_sidecar(tmp_path, app_id=APP_ID, resources=stores(database))
    try:
        with other.client() as second:
            assert save(api, {"key": key, "value": "from A"}).status_code == 204
            seen = second.get(f"/v1.0/state/{STORE}/{key}")
            assert seen.json() == "from A"
            etag = seen.headers["etag"]
            assert etag == api.get(f"/v1.0/state/{STORE}/{key}").headers["etag"]
            assert save(second, {"key": key, "value": "from B", "etag": etag}).status_code == 204
            stale = save(api, {"key": key, "value": "late A", "etag": etag})
            assert stale.status_code == 409
            fresh = api.get(f"/v1.0/state/{STORE}/{key}")
            assert fresh.json() == "from B" and fresh.headers["etag"] != etag
    finally:
        other.stop()


def test_sidecars_starting_together_migrate_once(postgres_url: str, tmp_path: Path) -> None:
    with private_database(postgres_url) as fresh:
        resources = {"store.yaml": component(STORE, "state.postgresql", {"connectionString": fresh})}
        with ThreadPoolExecutor(3) as pool:
            starts = [pool.submit(start_sidecar, tmp_path / f"s{i}", APP_ID, resources) for i in range(3)]
        # Those that started are stopped even when another failed (and so fails the test).
        sidecars = [start.result() for start in starts if start.exception() is None]
        try:
            assert len(sidecars) == 3, [str(start.exception()) for start in starts]
            for i, proc in enumerate(sidecars):
                with proc.client() as client:
                    assert save(client, {"key": f"k{i}", "value": i}).status_code == 204
            with sidecars[0].client() as client:
                bulk = client.post(f"/v1.0/state/{STORE}/bulk", json={"keys": ["k0", "k1", "k2"]}).json()
            assert [item["data"] for item in bulk] == [0, 1, 2]
            meta = fetch(fresh, "SELECT key, value FROM dapr_metadata WHERE key NOT LIKE 'pillion-last-%'")
            assert sorted((row[0], row[1]) for row in meta) == [
                ("lock", "lock"),
                ("migrations-state-v2-", "1"),
            ]
            functions = fetch(fresh, "SELECT count(*) FROM pg_proc WHERE proname = 'pillion_json_v1'")
            assert functions[0][0] == 1
        finally:
            for proc in sidecars:
                proc.stop()


# --- connection strings and start-up failures --------------------------------------------------


def libpq_pairs(url: str) -> str:
    parsed = httpx.URL(url)
    pairs = f"host={parsed.host} port = {parsed.port or 5432} user='{parsed.username}' connect_timeout=5"
    if parsed.password:
        pairs += " password='" + parsed.password.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return pairs + f" dbname='{parsed.path.lstrip('/')}'"


def test_key_value_connection_string_and_version_v2(database: str, tmp_path: Path) -> None:
    text = component(
        STORE, "state.postgresql", {"connectionString": libpq_pairs(database), "cleanupInterval": "0"}
    )
    proc = start_sidecar(
        tmp_path, app_id=APP_ID, resources={"store.yaml": text.replace("version: v1", "version: v2")}
    )
    try:
        with proc.client() as client:
            assert client.get(f"/v1.0/state/{STORE}/none").status_code == 204
    finally:
        proc.stop()


def run_to_exit(tmp_path: Path, metadata: dict[str, str]) -> str:
    folder = write_resources(
        tmp_path / "resources", {"pg.yaml": component("broken", "state.postgresql", metadata)}
    )
    result = run_sidecar_to_exit(
        tmp_path, ["--app-id", APP_ID, "--resources-path", str(folder), "--dapr-http-port", str(free_port())]
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("pillion:")]
    assert len(lines) == 1, result.stderr
    assert "pg.yaml" in lines[0] and "'broken'" in lines[0]
    return lines[0]


def test_unreachable_server_stops_start_up_with_one_line(tmp_path: Path) -> None:
    port = free_port()
    line = run_to_exit(tmp_path, {"connectionString": f"postgres://app:s3cret-pw@127.0.0.1:{port}/db"})
    assert f"cannot connect to PostgreSQL at 127.0.0.1:{port}/db" in line
    assert "s3cret-pw" not in line


def test_unknown_database_stops_start_up(tmp_path: Path, database: str) -> None:
    line = run_to_exit(tmp_path, {"connectionString": database.rsplit("/", 1)[0] + "/no_such_db"})
    assert 'database "no_such_db" does not exist' in line


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ({"connectionString": "host=x password='unterminated"}, "cannot read it at character"),
        ({"connectionString": "host=x", "tableName": "a;b"}, "'a;b' is not a valid table name"),
        ({"connectionString": "host=x", "tableName": "t", "tablePrefix": "p_"}, "not both"),
        ({"connectionString": "host=x", "timeout": "0s"}, "must be more than 0"),
    ],
)
def test_bad_metadata_stops_start_up(tmp_path: Path, metadata: dict[str, str], problem: str) -> None:
    line = run_to_exit(tmp_path, metadata)
    assert problem in line
    assert "unterminated" not in line


def test_a_dapr_v1_table_is_refused(tmp_path: Path, database: str) -> None:
    fetch(database, "CREATE TABLE v1_state (key text PRIMARY KEY, value jsonb NOT NULL, isbinary boolean)")
    line = run_to_exit(tmp_path, {"connectionString": database, "tableName": "v1_state"})
    assert "without Dapr v2's layout" in line and "Dapr v1" in line


def test_a_newer_schema_level_is_refused(tmp_path: Path, database: str, sidecar: SidecarProcess) -> None:
    fetch(database, "INSERT INTO dapr_metadata (key, value) VALUES ('migrations-state-v2-future_', '2')")
    line = run_to_exit(tmp_path, {"connectionString": database, "tablePrefix": "future_"})
    assert "schema level 2" in line

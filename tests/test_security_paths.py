"""Path traversal attempts are harmless (issue 7): state keys, topics, metadata keys and secret
names are looked up as names, never used as file paths, however they are spelled in the URL.
Keys with odd bytes and any unicode come back exactly as they were saved."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote_plus

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.rawhttp import RawConnection
from tests.secrets_support import component as secret_component
from tests.state_support import component
from tests.support import SidecarProcess, start_sidecar

DECOY = "decoy-content-that-must-never-be-served"
# Each is sent exactly as written, on a raw connection (HTTP clients would clean the dots away).
TRAVERSALS = [
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%2E%2E%2Foutside.json",
    "..%2Foutside.json",
    "..",
    "%2e%2e",
    "%2Fetc%2Fpasswd",
    "..%5C..%5Coutside.json",
    "%252e%252e%252foutside.json",
    "....%2F%2F....%2F%2Foutside.json",
]
UNESCAPED = ["../../etc/passwd", "../outside.json", "./../outside.json"]


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    workdir = tmp_path_factory.mktemp("traversal")
    # Files a traversal would reach from the secrets file's folder, the data folder or the cwd.
    for where in (workdir, workdir / "resources", workdir / "data"):
        where.mkdir(exist_ok=True)
        (where / "outside.json").write_text(json.dumps({"leak": DECOY}))
    (workdir / "secrets.json").write_text(json.dumps({"real": "value", "nested": {"a": "b"}}))
    proc = start_sidecar(
        workdir,
        resources={
            "s.yaml": component(
                "statestore", "state.sqlite", {"connectionString": str(workdir / "state.db")}
            ),
            "p.yaml": component("pubsub", "pubsub.sqlite", {"connectionString": str(workdir / "pubsub.db")}),
            "f.yaml": secret_component(
                "secretstore", "secretstores.local.file", {"secretsFile": str(workdir / "secrets.json")}
            ),
        },
    )
    yield proc
    proc.stop()


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(("state.db", "pubsub.db"))}


async def raw(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    conn = await RawConnection.open("127.0.0.1", port)
    try:
        answer = await conn.request(method, path, body)
    finally:
        await conn.close()
    return answer.status, answer.body


def send(sidecar: SidecarProcess, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    return asyncio.run(raw(sidecar.port, method, path, body))


def decode(spelled: str) -> str:
    """The name a path segment gives once query-unescaped, as daprd and Pillion read it."""
    return unquote_plus(spelled)


@pytest.mark.parametrize("spelled", TRAVERSALS)
def test_a_state_key_that_looks_like_a_path_is_just_a_key(sidecar: SidecarProcess, spelled: str) -> None:
    before = files_under(sidecar.data_dir.parent)
    key = decode(spelled)
    assert send(sidecar, "GET", f"/v1.0/state/statestore/{spelled}") == (204, b"")
    value = json.dumps([{"key": key, "value": "stored"}]).encode()
    assert send(sidecar, "POST", "/v1.0/state/statestore", value)[0] == 204
    assert send(sidecar, "GET", f"/v1.0/state/statestore/{spelled}") == (200, b'"stored"')
    bulk = httpx.post(f"{sidecar.url}/v1.0/state/statestore/bulk", json={"keys": [key]}).json()
    assert [(item["key"], item["data"]) for item in bulk] == [(key, "stored")]
    assert send(sidecar, "DELETE", f"/v1.0/state/statestore/{spelled}")[0] == 204
    assert files_under(sidecar.data_dir.parent) == before


def test_keys_are_rows_in_the_database_not_files(sidecar: SidecarProcess) -> None:
    key = "../../etc/passwd"
    assert (
        httpx.post(f"{sidecar.url}/v1.0/state/statestore", json=[{"key": key, "value": 1}]).status_code == 204
    )
    with sqlite3.connect(sidecar.data_dir.parent / "state.db") as db:
        assert db.execute("SELECT value FROM state WHERE key = ?", (f"testapp||{key}",)).fetchall() == [
            ("1",)
        ]


@pytest.mark.parametrize("path", UNESCAPED)
def test_unescaped_dot_segments_reach_no_handler(sidecar: SidecarProcess, path: str) -> None:
    # A "/" inside a key must be sent as %2F; a bare one leaves the key route, as in daprd.
    for prefix in ("/v1.0/state/statestore/", "/v1.0/secrets/secretstore/", "/v1.0/"):
        status, body = send(sidecar, "GET", prefix + path)
        assert status == 404, (prefix, body)
        assert json.loads(body)["errorCode"] == "ERR_DIRECT_INVOKE"
        assert DECOY.encode() not in body


@pytest.mark.parametrize("spelled", TRAVERSALS)
def test_a_secret_name_never_reads_a_file(sidecar: SidecarProcess, spelled: str) -> None:
    status, body = send(sidecar, "GET", f"/v1.0/secrets/secretstore/{spelled}")
    assert DECOY.encode() not in body
    assert (status, json.loads(body)["errorCode"]) == (500, "ERR_SECRET_GET")
    assert f"secret {decode(spelled)} not found" in json.loads(body)["message"]


def test_bulk_secrets_are_the_file_and_nothing_else(sidecar: SidecarProcess) -> None:
    answer = httpx.get(f"{sidecar.url}/v1.0/secrets/secretstore/bulk")
    assert answer.json() == {"real": {"real": "value"}, "nested:a": {"nested:a": "b"}}


@pytest.mark.parametrize("spelled", TRAVERSALS)
def test_a_store_name_that_looks_like_a_path_is_an_unknown_store(
    sidecar: SidecarProcess, spelled: str
) -> None:
    status, body = send(sidecar, "GET", f"/v1.0/state/{spelled}/k")
    assert (status, json.loads(body)["errorCode"]) == (400, "ERR_STATE_STORE_NOT_FOUND")
    status, body = send(sidecar, "GET", f"/v1.0/secrets/{spelled}/real")
    assert (status, json.loads(body)["errorCode"]) == (401, "ERR_SECRET_STORE_NOT_FOUND")


@pytest.mark.parametrize("spelled", TRAVERSALS)
def test_a_topic_that_looks_like_a_path_is_just_a_topic(sidecar: SidecarProcess, spelled: str) -> None:
    before = files_under(sidecar.data_dir.parent)
    assert send(sidecar, "POST", f"/v1.0/publish/pubsub/{spelled}", b'"x"')[0] == 204
    assert send(sidecar, "POST", f"/v1.0/publish/pubsub/a/{spelled}/b", b'"x"')[0] == 204
    assert files_under(sidecar.data_dir.parent) == before


@pytest.mark.parametrize("spelled", TRAVERSALS)
def test_a_metadata_key_that_looks_like_a_path_is_just_a_name(sidecar: SidecarProcess, spelled: str) -> None:
    before = files_under(sidecar.data_dir.parent)
    assert send(sidecar, "PUT", f"/v1.0/metadata/{spelled}", b"v")[0] == 204
    assert httpx.get(f"{sidecar.url}/v1.0/metadata").json()["extended"][decode(spelled)] == "v"
    assert files_under(sidecar.data_dir.parent) == before


KEYS = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40).filter(
    lambda k: "||" not in k
)


@settings(max_examples=60, deadline=None)
@given(key=KEYS)
def test_any_unicode_key_round_trips(sidecar: SidecarProcess, key: str) -> None:
    with httpx.Client(base_url=sidecar.url, timeout=10) as api:
        assert api.post("/v1.0/state/statestore", json=[{"key": key, "value": [key]}]).status_code == 204
        path = f"/v1.0/state/statestore/{quote(key, safe='')}"
        got = api.get(path)
        assert (got.status_code, got.json()) == (200, [key])
        bulk = api.post("/v1.0/state/statestore/bulk", json={"keys": [key]}).json()
        assert bulk == [{"key": key, "data": [key], "etag": got.headers["etag"]}]
        assert api.delete(path).status_code == 204
        assert api.get(path).status_code == 204

"""State encryption at rest (primaryEncryptionKey / secondaryEncryptionKey): the HTTP API is
unchanged, the bytes in SQLite and Redis are not the plaintext, keys rotate, and Dapr's stored
format reads back."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
from pathlib import Path

import httpx
import redis
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.secrets_support import SecretRef, component, error_line, sidecar_to_exit
from tests.state_support import redis_metadata
from tests.support import SidecarProcess, start_sidecar

KEY_A = os.urandom(32).hex()
KEY_B = os.urandom(16).hex()  # a 128-bit key: Dapr takes 128, 192 and 256 bits
MARKER = "card-4111-plaintext-marker"
KEYS = json.dumps({"key-a": {"k": KEY_A}, "key-b": {"k": KEY_B}})


def _sqlite_resources(db: Path, primary: str | None, secondary: str | None = None) -> dict[str, str]:
    metadata: dict[str, str | SecretRef] = {"connectionString": str(db)}
    if primary:
        metadata["primaryEncryptionKey"] = SecretRef(primary, "k")
    if secondary:
        metadata["secondaryEncryptionKey"] = SecretRef(secondary, "k")
    return {
        "keys.json": KEYS,
        "keys.yaml": component(
            "keys", "secretstores.local.file", {"secretsFile": "keys.json", "multiValued": "true"}
        ),
        "state.yaml": component("statestore", "state.sqlite", metadata, secret_store="keys"),
    }


def _start(workdir: Path, resources: dict[str, str]) -> SidecarProcess:
    return start_sidecar(workdir, resources=resources)


def _rows(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT key, value FROM state").fetchall())


def test_sqlite_values_are_encrypted_and_the_api_is_unchanged(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    sidecar = _start(tmp_path / "run", _sqlite_resources(db, "key-a"))
    try:
        with sidecar.client() as client:
            value = {"card": MARKER, "n": 1}
            assert (
                client.post("/v1.0/state/statestore", json=[{"key": "order", "value": value}]).status_code
                == 204
            )
            got = client.get("/v1.0/state/statestore/order")
            assert got.json() == value
            etag = got.headers["etag"]
            stale = client.post(
                "/v1.0/state/statestore", json=[{"key": "order", "value": 2, "etag": "not-the-etag"}]
            )
            assert stale.status_code == 409
            fresh = client.post(
                "/v1.0/state/statestore", json=[{"key": "order", "value": value, "etag": etag}]
            )
            assert fresh.status_code == 204
            ttl = client.post(
                "/v1.0/state/statestore?metadata.ttlInSeconds=100", json=[{"key": "brief", "value": MARKER}]
            )
            assert ttl.status_code == 204
            assert "metadata.ttlExpireTime" in client.get("/v1.0/state/statestore/brief").headers
            operations = [
                {"operation": "upsert", "request": {"key": "t1", "value": MARKER}},
                {"operation": "delete", "request": {"key": "brief"}},
            ]
            tx = client.post("/v1.0/state/statestore/transaction", json={"operations": operations})
            assert tx.status_code == 204
            bulk = client.post("/v1.0/state/statestore/bulk", json={"keys": ["order", "t1", "brief"]}).json()
            assert [item.get("data") for item in bulk] == [value, MARKER, None]
            query = client.post("/v1.0-alpha1/state/statestore/query", json={"filter": {}})
            assert query.status_code == 500
            assert query.json()["errorCode"] == "ERR_STATE_STORE_NOT_SUPPORTED"
            components = {c["name"]: c for c in client.get("/v1.0/metadata").json()["components"]}
            assert components["statestore"]["capabilities"] == ["ACTOR", "ETAG", "TRANSACTIONAL", "TTL"]
    finally:
        sidecar.stop()
    rows = _rows(db)
    assert set(rows) == {"testapp||order", "testapp||t1"}
    for stored in rows.values():
        assert MARKER not in stored
        assert stored.endswith("||key-a")
    assert MARKER.encode() not in db.read_bytes()


def test_keys_rotate_through_secondary_encryption_key(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    sidecar = _start(tmp_path / "one", _sqlite_resources(db, "key-a"))
    try:
        assert (
            httpx.post(
                sidecar.url + "/v1.0/state/statestore", json=[{"key": "old", "value": "A"}]
            ).status_code
            == 204
        )
    finally:
        sidecar.stop()

    sidecar = _start(tmp_path / "two", _sqlite_resources(db, "key-b", secondary="key-a"))
    try:
        with sidecar.client() as client:
            assert client.get("/v1.0/state/statestore/old").json() == "A"
            assert (
                client.post("/v1.0/state/statestore", json=[{"key": "new", "value": "B"}]).status_code == 204
            )
    finally:
        sidecar.stop()
    rows = _rows(db)
    assert rows["testapp||old"].endswith("||key-a") and rows["testapp||new"].endswith("||key-b")

    sidecar = _start(tmp_path / "three", _sqlite_resources(db, "key-b"))
    try:
        with sidecar.client() as client:
            assert client.get("/v1.0/state/statestore/new").json() == "B"
            lost = client.get("/v1.0/state/statestore/old")
            assert lost.status_code == 500
            assert lost.json()["errorCode"] == "ERR_STATE_GET"
            assert "encrypted with key 'key-a'" in lost.json()["message"]
    finally:
        sidecar.stop()
    assert KEY_A not in sidecar.log() and KEY_B not in sidecar.log()


def test_values_in_daprs_stored_format_read_back(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    sidecar = _start(tmp_path / "run", _sqlite_resources(db, "key-a"))
    try:
        # What daprd writes: base64(nonce || AES-GCM ciphertext and tag) + "||" + secret name.
        nonce = os.urandom(12)
        sealed = AESGCM(bytes.fromhex(KEY_A)).encrypt(nonce, b'{"from":"dapr"}', None)
        stored = base64.b64encode(nonce + sealed).decode() + "||key-a"
        with sqlite3.connect(db) as conn:
            conn.execute(
                "INSERT INTO state (key, value, is_binary, etag) VALUES (?, ?, 0, 'e1')",
                ("testapp||from-dapr", stored),
            )
        got = httpx.get(sidecar.url + "/v1.0/state/statestore/from-dapr")
        assert got.json() == {"from": "dapr"}
        assert got.headers["etag"] == "e1"
    finally:
        sidecar.stop()


def test_redis_values_are_encrypted_with_an_inline_key(tmp_path: Path, redis_url: str) -> None:
    metadata: dict[str, str | SecretRef] = {**redis_metadata(redis_url), "primaryEncryptionKey": KEY_A}
    resources = {"state.yaml": component("statestore", "state.redis", metadata)}
    sidecar = start_sidecar(tmp_path, app_id="enc-at-rest", resources=resources)
    try:
        with sidecar.client() as client:
            assert (
                client.post("/v1.0/state/statestore", json=[{"key": "k", "value": MARKER}]).status_code == 204
            )
            got = client.get("/v1.0/state/statestore/k")
            assert got.json() == MARKER
            assert got.headers["etag"] == "1"
            components = {c["name"]: c for c in client.get("/v1.0/metadata").json()["components"]}
            assert "QUERY_API" not in components["statestore"]["capabilities"]
    finally:
        sidecar.stop()
    raw = redis.Redis.from_url(redis_url)
    try:
        stored = raw.hget("enc-at-rest||k", "data")
    finally:
        raw.close()
    assert isinstance(stored, bytes) and MARKER.encode() not in stored
    encoded, _, name = stored.partition(b"||")
    assert len(base64.b64decode(encoded)) == 12 + len(json.dumps(MARKER)) + 16
    assert name and KEY_A.encode() not in name
    assert KEY_A not in sidecar.log()


def test_a_bad_key_is_one_line_that_does_not_show_it(tmp_path: Path) -> None:
    not_a_key = "not-hex-but-secret-9a1c"
    resources = {
        "state.yaml": component("statestore", "state.in-memory", {"primaryEncryptionKey": not_a_key}),
    }
    result = sidecar_to_exit(tmp_path / "one", resources)
    line = error_line(result)
    assert "metadata field 'primaryEncryptionKey': not a hex-encoded 128, 192 or 256-bit AES key" in line
    assert not_a_key not in result.stderr

    short = os.urandom(8).hex()
    resources = {"state.yaml": component("statestore", "state.in-memory", {"primaryEncryptionKey": short})}
    result = sidecar_to_exit(tmp_path / "two", resources)
    assert "not a hex-encoded" in error_line(result) and short not in result.stderr

    resources = {"state.yaml": component("statestore", "state.in-memory", {"secondaryEncryptionKey": KEY_A})}
    line = error_line(sidecar_to_exit(tmp_path / "three", resources))
    assert "metadata field 'secondaryEncryptionKey': is set but primaryEncryptionKey is not" in line

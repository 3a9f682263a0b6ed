"""``state.redis`` specifics, through a real sidecar and checked against the raw Redis data.

The behaviour every store shares is covered by tests/test_state_api.py; these tests cover what
only Redis has: the Dapr-compatible layout, numeric etags, the one-script atomic writes with their
TTL, legacy string values, connection settings and start-up failures.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import redis
import yaml
from redis.client import Monitor

from tests.state_support import redis_metadata
from tests.support import SidecarProcess, free_port, run_sidecar_to_exit, start_sidecar, write_resources

APP_ID = "testapp"
STORE = "statestore"  # keyPrefix appid (the default): raw keys are "testapp||<key>"
TTL_STORE = "ttlstore"  # keyPrefix name and a component-wide ttlInSeconds of 100
COMPONENT_TTL = 100


def component(name: str, metadata: dict[str, str]) -> str:
    # yaml.safe_dump keeps multi-line values (PEM text) intact.
    return yaml.safe_dump(
        {
            "apiVersion": "dapr.io/v1alpha1",
            "kind": "Component",
            "metadata": {"name": name},
            "spec": {
                "type": "state.redis",
                "version": "v1",
                "metadata": [{"name": k, "value": v} for k, v in metadata.items()],
            },
        }
    )


@pytest.fixture(scope="module")
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def sidecar(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    meta = redis_metadata(redis_url)
    ttl_meta = {
        **meta,
        "keyPrefix": "name",
        "ttlInSeconds": str(COMPONENT_TTL),
        "queryIndexes": '[{"name": "idx", "indexes": [{"key": "a", "type": "TEXT"}]}]',
    }
    proc = start_sidecar(
        tmp_path_factory.mktemp("state-redis"),
        app_id=APP_ID,
        resources={
            "statestore.yaml": component(STORE, meta),
            "ttlstore.yaml": component(TTL_STORE, ttl_meta),
        },
    )
    yield proc
    proc.stop()


@pytest.fixture
def api(sidecar: SidecarProcess) -> Iterator[httpx.Client]:
    with sidecar.client() as client:
        yield client


@pytest.fixture
def key() -> str:
    return f"redis-{uuid.uuid4().hex[:12]}"


def save(api: httpx.Client, *items: dict[str, Any], store: str = STORE) -> httpx.Response:
    return api.post(f"/v1.0/state/{store}", json=list(items))


def transact(api: httpx.Client, *ops: dict[str, Any]) -> httpx.Response:
    return api.post(f"/v1.0/state/{STORE}/transaction", json={"operations": list(ops)})


def upsert(key: str, value: Any, etag: str | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {"key": key, "value": value}
    if etag is not None:
        request["etag"] = etag
    return {"operation": "upsert", "request": request}


def error_code(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["errorCode"]


def expire_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def test_features_and_ignored_query_indexes(api: httpx.Client, sidecar: SidecarProcess) -> None:
    components = {c["name"]: c for c in api.get("/v1.0/metadata").json()["components"]}
    assert components[STORE]["capabilities"] == ["ACTOR", "ETAG", "TRANSACTIONAL", "TTL"]
    assert "queryIndexes is ignored" in sidecar.log()


# --- layout and etags -------------------------------------------------------------------------


def test_values_are_hashes_with_data_and_a_counting_version(
    api: httpx.Client, raw: redis.Redis, key: str
) -> None:
    etags = []
    for n in range(1, 4):
        assert save(api, {"key": key, "value": {"n": n}}).status_code == 204
        etags.append(api.get(f"/v1.0/state/{STORE}/{key}").headers["etag"])
    assert etags == ["1", "2", "3"]
    raw_key = f"{APP_ID}||{key}"
    assert raw.type(raw_key) == b"hash"
    assert raw.hgetall(raw_key) == {b"data": b'{"n":3}', b"version": b"3"}
    assert raw.pttl(raw_key) == -1
    # Etags are numbers: "03" is version 3, as in Dapr.
    assert save(api, {"key": key, "value": 4, "etag": "03"}).status_code == 204
    assert raw.hget(raw_key, "version") == b"4"


def test_a_non_numeric_etag_is_400_and_writes_nothing(api: httpx.Client, raw: redis.Redis, key: str) -> None:
    assert save(api, {"key": key, "value": "v"}).status_code == 204
    assert error_code(save(api, {"key": key, "value": "w", "etag": "abc"})) == (400, "ERR_STATE_SAVE")
    deleted = api.delete(f"/v1.0/state/{STORE}/{key}", headers={"If-Match": "1x"})
    assert error_code(deleted) == (400, "ERR_STATE_DELETE")
    other = f"{key}-other"
    failed = transact(api, upsert(other, 1), upsert(key, "w", etag="abc"))
    assert error_code(failed) == (500, "ERR_STATE_TRANSACTION")
    assert raw.hgetall(f"{APP_ID}||{key}") == {b"data": b'"v"', b"version": b"1"}
    assert raw.exists(f"{APP_ID}||{other}") == 0


def test_a_hash_without_data_is_an_error(api: httpx.Client, raw: redis.Redis, key: str) -> None:
    raw.hset(f"{APP_ID}||{key}", "version", "1")
    assert error_code(api.get(f"/v1.0/state/{STORE}/{key}")) == (500, "ERR_STATE_GET")


def test_a_legacy_string_value_reads_without_etag(api: httpx.Client, raw: redis.Redis, key: str) -> None:
    raw_key = f"{APP_ID}||{key}"
    raw.set(raw_key, b'{"old":true}')
    response = api.get(f"/v1.0/state/{STORE}/{key}")
    assert response.status_code == 200
    assert response.json() == {"old": True}
    assert "etag" not in response.headers
    bulk = api.post(f"/v1.0/state/{STORE}/bulk", json={"keys": [key]}).json()
    assert bulk == [{"key": key, "data": {"old": True}}]
    # The key exists, so first-write refuses it, and no etag can match it.
    first = {"key": key, "value": 1, "options": {"concurrency": "first-write"}}
    assert save(api, first).status_code == 409
    assert save(api, {"key": key, "value": 1, "etag": "1"}).status_code == 409
    assert raw.get(raw_key) == b'{"old":true}'
    # A plain save turns it into a versioned hash.
    assert save(api, {"key": key, "value": 2}).status_code == 204
    assert raw.hgetall(raw_key) == {b"data": b"2", b"version": b"1"}


def test_the_scripts_are_reloaded_after_a_script_flush(api: httpx.Client, raw: redis.Redis, key: str) -> None:
    assert save(api, {"key": key, "value": 1}).status_code == 204
    raw.script_flush()
    assert api.get(f"/v1.0/state/{STORE}/{key}").json() == 1
    raw.script_flush()
    assert api.post(f"/v1.0/state/{STORE}/bulk", json={"keys": [key]}).json()[0]["data"] == 1
    raw.script_flush()
    assert save(api, {"key": key, "value": 2}).status_code == 204
    assert raw.hget(f"{APP_ID}||{key}", "version") == b"2"


# --- atomic transactions --------------------------------------------------------------------------


def test_a_transaction_with_one_bad_etag_writes_nothing(
    api: httpx.Client, raw: redis.Redis, key: str
) -> None:
    a, b, c, d = (f"{key}-{name}" for name in "abcd")
    assert (
        save(api, {"key": a, "value": "a1"}, {"key": b, "value": "b1"}, {"key": d, "value": "d1"}).status_code
        == 204
    )
    before = {k: raw.hgetall(f"{APP_ID}||{k}") for k in (a, b, d)}
    response = transact(
        api,
        upsert(a, "a2", etag="1"),
        {"operation": "delete", "request": {"key": b}},
        upsert(c, "c1"),
        upsert(d, "d2", etag="7"),
    )
    assert error_code(response) == (500, "ERR_STATE_TRANSACTION")
    assert repr(d) in response.json()["message"]
    # Dapr's MULTI/EXEC would have applied the first three operations.
    assert {k: raw.hgetall(f"{APP_ID}||{k}") for k in (a, b, d)} == before
    assert raw.exists(f"{APP_ID}||{c}") == 0


def test_transaction_checks_see_the_earlier_operations(api: httpx.Client, raw: redis.Redis, key: str) -> None:
    gone, kept = f"{key}-gone", f"{key}-kept"
    assert save(api, {"key": kept, "value": 1}).status_code == 204
    response = transact(
        api,
        upsert(gone, "x"),
        {"operation": "delete", "request": {"key": gone, "etag": "1"}},
        upsert(kept, 2, etag="1"),
        upsert(kept, 3, etag="2"),
    )
    assert response.status_code == 204, response.text
    assert raw.exists(f"{APP_ID}||{gone}") == 0
    assert raw.hgetall(f"{APP_ID}||{kept}") == {b"data": b"3", b"version": b"3"}


# --- TTL ------------------------------------------------------------------------------------------


def test_a_save_is_one_script_call_that_sets_the_value_and_its_ttl(
    api: httpx.Client, redis_url: str, key: str
) -> None:
    raw_key = f"{APP_ID}||{key}"
    seen: list[tuple[str, str]] = []
    # A socket timeout ends the wait if the EXPIRE never comes from inside the script.
    watcher = redis.Redis.from_url(redis_url, socket_timeout=5)
    # Through a typed alias: redis-py leaves monitor() untyped today and may type it in a later release.
    start_monitor = cast("Callable[[], Monitor]", watcher.monitor)
    with watcher, start_monitor() as monitor:
        response = save(api, {"key": key, "value": "v", "metadata": {"ttlInSeconds": "60"}})
        assert response.status_code == 204
        while ("lua", "EXPIRE") not in seen:
            command = monitor.next_command()
            if raw_key in command["command"]:
                seen.append((command["client_type"], command["command"].split()[0].upper()))
    from_sidecar = [name for client, name in seen if client != "lua"]
    assert from_sidecar == ["EVALSHA"], seen
    assert ("lua", "HSET") in seen


def test_ttl_is_stored_with_the_value_and_reported(api: httpx.Client, raw: redis.Redis, key: str) -> None:
    assert save(api, {"key": key, "value": "v", "metadata": {"ttlInSeconds": "3600"}}).status_code == 204
    assert 3_590_000 < raw.pttl(f"{APP_ID}||{key}") <= 3_600_000
    expected = datetime.now(UTC) + timedelta(seconds=3600)
    response = api.get(f"/v1.0/state/{STORE}/{key}")
    assert abs(expire_time(response.headers["metadata.ttlExpireTime"]) - expected) < timedelta(seconds=10)
    bulk = api.post(f"/v1.0/state/{STORE}/bulk", json={"keys": [key]}).json()
    assert abs(expire_time(bulk[0]["metadata"]["ttlExpireTime"]) - expected) < timedelta(seconds=10)


def test_ttl_is_cleared_by_minus_one_and_by_a_plain_save(
    api: httpx.Client, raw: redis.Redis, key: str
) -> None:
    raw_key = f"{APP_ID}||{key}"
    for clearing in ({"ttlInSeconds": "-1"}, {}):
        assert save(api, {"key": key, "value": 1, "metadata": {"ttlInSeconds": "100"}}).status_code == 204
        assert raw.pttl(raw_key) > 0
        assert save(api, {"key": key, "value": 2, "metadata": clearing}).status_code == 204
        assert raw.pttl(raw_key) == -1
        assert "metadata.ttlExpireTime" not in api.get(f"/v1.0/state/{STORE}/{key}").headers


def test_the_component_ttl_is_the_default(api: httpx.Client, raw: redis.Redis, key: str) -> None:
    raw_key = f"{TTL_STORE}||{key}"
    assert save(api, {"key": key, "value": 1}, store=TTL_STORE).status_code == 204
    assert COMPONENT_TTL * 1000 - 10_000 < raw.pttl(raw_key) <= COMPONENT_TTL * 1000
    assert (
        save(api, {"key": key, "value": 2, "metadata": {"ttlInSeconds": "5"}}, store=TTL_STORE).status_code
        == 204
    )
    assert 0 < raw.pttl(raw_key) <= 5000
    assert (
        save(api, {"key": key, "value": 3, "metadata": {"ttlInSeconds": "-1"}}, store=TTL_STORE).status_code
        == 204
    )
    assert raw.pttl(raw_key) == -1
    assert raw.hgetall(raw_key) == {b"data": b"3", b"version": b"3"}


# --- start-up -------------------------------------------------------------------------------------


def run_to_exit(tmp_path: Path, metadata: dict[str, str]) -> str:
    """Start a sidecar with one ``state.redis`` component 'broken'; return its one error line."""
    folder = write_resources(tmp_path / "res", {"redisstore.yaml": component("broken", metadata)})
    result = run_sidecar_to_exit(
        tmp_path, ["--app-id", APP_ID, "--resources-path", str(folder), "--dapr-http-port", str(free_port())]
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("pillion:")]
    assert len(lines) == 1, result.stderr
    assert "redisstore.yaml" in lines[0] and "'broken'" in lines[0]
    return lines[0]


def test_unreachable_redis_stops_start_up_with_one_line(tmp_path: Path) -> None:
    port = free_port()
    line = run_to_exit(tmp_path, {"redisHost": f"127.0.0.1:{port}", "redisMaxRetries": "0"})
    assert "init failed" in line and f"127.0.0.1:{port}" in line


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ({"redisType": "cluster"}, "metadata field 'redisType': Redis Cluster is not supported yet"),
        ({"failover": "true"}, "metadata field 'sentinelMasterName': is required with failover: true"),
        ({"redisPort": "1"}, "metadata field 'redisPort'"),
    ],
)
def test_unsupported_settings_are_refused_clearly(
    tmp_path: Path, redis_url: str, metadata: dict[str, str], problem: str
) -> None:
    line = run_to_exit(tmp_path, {**redis_metadata(redis_url), **metadata})
    assert problem in line


# --- TLS ------------------------------------------------------------------------------------------


EC_KEY = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"  # quicker to make than RSA


def make_certificates(folder: Path) -> None:
    """A CA, and a server and a client certificate signed by it."""

    def openssl(command: str) -> None:
        subprocess.run(["openssl", *command.split()], cwd=folder, check=True, capture_output=True)

    openssl(f"req -x509 {EC_KEY} -keyout ca.key -out ca.crt -days 1 -subj /CN=test-ca")
    for name in ("server", "client"):
        openssl(f"req {EC_KEY} -keyout {name}.key -out {name}.csr -subj /CN={name}")
        openssl(f"x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out {name}.crt -days 1")


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[int]:
    """A private redis-server that speaks only TLS and requires a client certificate."""
    server = shutil.which("redis-server")
    if server is None or shutil.which("openssl") is None:
        pytest.skip("needs redis-server and openssl")
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certificates(certs)
    port = free_port()
    options = (
        f"--port 0 --tls-port {port} --bind 127.0.0.1 --appendonly no --tls-cert-file server.crt "
        "--tls-key-file server.key --tls-ca-cert-file ca.crt --tls-auth-clients yes"
    )
    proc = subprocess.Popen(
        [server, *options.split(), "--save", ""],
        cwd=certs,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(
        port=port,
        ssl=True,
        ssl_ca_certs=str(certs / "ca.crt"),
        ssl_check_hostname=False,
        ssl_certfile=str(certs / "client.crt"),
        ssl_keyfile=str(certs / "client.key"),
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None:
                    pytest.skip("this redis-server cannot serve TLS")
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def test_tls_with_a_client_certificate(tmp_path: Path, tls_redis: int, key: str) -> None:
    certs = tmp_path / "certs"
    base = {"redisHost": f"127.0.0.1:{tls_redis}", "enableTLS": "true", "redisMaxRetries": "0"}
    # PEM text in the metadata, as Dapr takes it.
    client = {
        "clientCert": (certs / "client.crt").read_text(),
        "clientKey": (certs / "client.key").read_text(),
    }
    sidecar = start_sidecar(
        tmp_path / "ok",
        resources={"tls.yaml": component(STORE, {**base, **client, "insecureSkipTLSVerify": "true"})},
    )
    try:
        with sidecar.client() as api:
            assert save(api, {"key": key, "value": "secure"}).status_code == 204
            assert api.get(f"/v1.0/state/{STORE}/{key}").json() == "secure"
    finally:
        sidecar.stop()
    # The server certificate is verified unless insecureSkipTLSVerify says otherwise.
    assert "CERTIFICATE_VERIFY_FAILED" in run_to_exit(tmp_path / "verify", {**base, **client})

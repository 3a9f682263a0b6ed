"""The sidecar process: start-up from resources, bad files, readiness, durability, clean stops."""

from __future__ import annotations

import http.server
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.state_support import component
from tests.support import free_port, run_sidecar_to_exit, start_sidecar, write_resources

GOOD = component("statestore", "state.in-memory", {})


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("kind: Component\napiVersion: dapr.io/v1alpha1\nmetadata: {name: broken\n", "invalid YAML"),
        (component("mystore", "state.nosuch", {}), "unknown spec.type 'state.nosuch'"),
        (component("mystore", "state.sqlite", {}), "metadata field 'connectionString': is required"),
        (
            component("mystore", "state.sqlite", {"connectionString": "x.db", "timeout": "soon"}),
            "metadata field 'timeout': value 'soon' is invalid",
        ),
        (component("mystore", "state.in-memory", {"keyPrefix": "a||b"}), "must not contain '||'"),
        (
            component("mystore", "state.in-memory", {}).replace("version: v1", "version: v9"),
            "spec.version 'v9' is not supported",
        ),
    ],
)
def test_bad_resource_file_stops_start_up_with_one_line(tmp_path: Path, text: str, problem: str) -> None:
    folder = write_resources(tmp_path / "res", {"ok.yaml": GOOD, "bad.yaml": text})
    result = run_sidecar_to_exit(
        tmp_path, ["--app-id", "a", "--resources-path", str(folder), "--dapr-http-port", str(free_port())]
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("pillion:")]
    assert len(lines) == 1, result.stderr
    assert "bad.yaml" in lines[0] and problem in lines[0]
    assert "Traceback" not in result.stderr
    if "invalid YAML" not in problem:
        assert "'mystore'" in lines[0]


def test_duplicate_component_name_names_both_files(tmp_path: Path) -> None:
    folder = write_resources(tmp_path / "res", {"a.yaml": GOOD, "b.yaml": GOOD})
    result = run_sidecar_to_exit(
        tmp_path, ["--app-id", "a", "--resources-path", str(folder), "--dapr-http-port", str(free_port())]
    )
    assert result.returncode == 1
    assert "b.yaml: component 'statestore': duplicate name" in result.stderr
    assert "a.yaml" in result.stderr


def test_multi_document_files_scopes_and_other_kinds(tmp_path: Path) -> None:
    other = component("other", "state.in-memory", {}) + "scopes: [someone-else]\n"
    docs = "\n---\n".join(
        [GOOD, other, "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata: {name: r}\n"]
    )
    sidecar = start_sidecar(tmp_path, resources={"all.yaml": docs})
    try:
        components = httpx.get(sidecar.url + "/v1.0/metadata").json()["components"]
        assert [c["name"] for c in components] == ["statestore"]
    finally:
        sidecar.stop()


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_sidecar_to_exit(
            tmp_path, ["--app-id", "a", "--dapr-http-port", str(port), "--data-dir", str(tmp_path / "d")]
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_state_store_configured(tmp_path: Path) -> None:
    sidecar = start_sidecar(tmp_path, resources={})
    try:
        response = httpx.get(sidecar.url + "/v1.0/state/statestore/k")
        assert response.status_code == 500
        body = response.json()
        assert body["errorCode"] == "ERR_STATE_STORE_NOT_CONFIGURED"
        assert body["details"][0]["reason"] == "DAPR_STATE_NOT_CONFIGURED"
    finally:
        sidecar.stop()


def test_embedded_default_is_a_durable_sqlite_store(tmp_path: Path) -> None:
    sidecar = start_sidecar(tmp_path)
    try:
        meta = httpx.get(sidecar.url + "/v1.0/metadata").json()
        assert meta["id"] == "testapp"
        assert meta["extended"]["daprRuntimeVersion"] == meta["runtimeVersion"]
        store = next(c for c in meta["components"] if c["name"] == "statestore")
        assert store["type"] == "state.sqlite"
        assert set(store["capabilities"]) >= {"ETAG", "TRANSACTIONAL", "TTL", "ACTOR", "QUERY_API"}
        httpx.post(sidecar.url + "/v1.0/state/statestore", json=[{"key": "k", "value": {"v": 1}}])
        etag = httpx.get(sidecar.url + "/v1.0/state/statestore/k").headers["etag"]
    finally:
        sidecar.kill()  # SIGKILL: nothing gets a chance to flush
    assert (sidecar.data_dir / "state.db").exists()
    again = start_sidecar(tmp_path, port=sidecar.port)
    try:
        response = httpx.get(again.url + "/v1.0/state/statestore/k")
        assert (response.status_code, response.content, response.headers["etag"]) == (200, b'{"v":1}', etag)
    finally:
        again.stop()


def test_sigterm_stops_cleanly_and_checkpoints_sqlite(tmp_path: Path) -> None:
    sidecar = start_sidecar(tmp_path)
    httpx.post(sidecar.url + "/v1.0/state/statestore", json=[{"key": f"k{i}", "value": i} for i in range(50)])
    assert sidecar.stop(signal.SIGTERM) == 0
    wal = sidecar.data_dir / "state.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    assert "pillion stopped" in sidecar.log()
    with sqlite3.connect(sidecar.data_dir / "state.db") as db:
        assert db.execute("SELECT count(*) FROM state").fetchone()[0] == 50


def test_sigint_stops_cleanly(tmp_path: Path) -> None:
    sidecar = start_sidecar(tmp_path)
    assert sidecar.stop(signal.SIGINT) == 0


def test_healthz_waits_for_the_app_port(tmp_path: Path) -> None:
    app_port = free_port()
    sidecar = start_sidecar(tmp_path, extra_args=["--app-port", str(app_port)])
    try:
        health = httpx.get(sidecar.url + "/v1.0/healthz")
        assert health.status_code == 500
        assert health.json()["errorCode"] == "ERR_HEALTH_NOT_READY"
        assert httpx.get(sidecar.url + "/v1.0/healthz/outbound").status_code == 204
        assert httpx.get(sidecar.url + "/v1.0/metadata").json()["appConnectionProperties"]["port"] == app_port
        # A real HTTP app (it answers 404 to everything, /dapr/subscribe included).
        app = http.server.ThreadingHTTPServer(("127.0.0.1", app_port), http.server.BaseHTTPRequestHandler)
        threading.Thread(target=app.serve_forever, daemon=True).start()
        try:
            deadline = time.monotonic() + 10
            while httpx.get(sidecar.url + "/v1.0/healthz").status_code != 204:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            app.shutdown()
            app.server_close()
        wrong = httpx.get(sidecar.url + "/v1.0/healthz?appid=other")
        assert wrong.json()["errorCode"] == "ERR_HEALTH_APPID_NOT_MATCH"
    finally:
        sidecar.stop()


@pytest.mark.parametrize(
    ("prefix", "stored"),
    [("appid", "testapp||k"), ("name", "st||k"), ("none", "k"), ("MyPrefix", "myprefix||k")],
)
def test_key_prefix_strategies(tmp_path: Path, prefix: str, stored: str) -> None:
    db = tmp_path / "p.db"
    yaml = component("st", "state.sqlite", {"connectionString": str(db), "keyPrefix": prefix})
    sidecar = start_sidecar(tmp_path, resources={"st.yaml": yaml})
    try:
        httpx.post(sidecar.url + "/v1.0/state/st", json=[{"key": "k", "value": 1}])
        bulk = httpx.post(sidecar.url + "/v1.0/state/st/bulk", json={"keys": ["k"]}).json()
        assert bulk[0]["key"] == "k"
        query = httpx.post(sidecar.url + "/v1.0-alpha1/state/st/query", json={}).json()
        assert [r["key"] for r in query["results"]] == ["k"]
    finally:
        sidecar.stop()
    with sqlite3.connect(db) as conn:
        assert [r[0] for r in conn.execute("SELECT key FROM state")] == [stored]


def test_namespace_prefix(tmp_path: Path) -> None:
    db = tmp_path / "n.db"
    yaml = component("st", "state.sqlite", {"connectionString": str(db), "keyPrefix": "namespace"})
    sidecar = start_sidecar(tmp_path, resources={"st.yaml": yaml}, env={"NAMESPACE": "prod"})
    try:
        httpx.post(sidecar.url + "/v1.0/state/st", json=[{"key": "k", "value": 1}])
    finally:
        sidecar.stop()
    with sqlite3.connect(db) as conn:
        assert [r[0] for r in conn.execute("SELECT key FROM state")] == ["prod.testapp||k"]


def test_reads_a_dapr_written_sqlite_database(tmp_path: Path) -> None:
    """A database in Dapr's layout (whole-second expiry text) opens and reads as it is."""
    db = tmp_path / "dapr.db"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE state (key TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL, is_binary BOOLEAN "
            "NOT NULL, etag TEXT NOT NULL, expiration_time TIMESTAMP DEFAULT NULL, update_time TIMESTAMP "
            "DEFAULT NULL)"
        )
        conn.execute("INSERT INTO state VALUES ('testapp||a', '{\"x\":1}', 0, 'e1', NULL, NULL)")
        conn.execute("INSERT INTO state VALUES ('testapp||b', '1', 0, 'e2', '2000-01-01 00:00:00', NULL)")
        conn.execute(
            "INSERT INTO state VALUES "
            "('testapp||c', '2', 0, 'e3', DATETIME(CURRENT_TIMESTAMP, '+1 hour'), NULL)"
        )
    yaml = component("statestore", "state.sqlite", {"connectionString": str(db)})
    sidecar = start_sidecar(tmp_path, resources={"s.yaml": yaml})
    try:
        a = httpx.get(sidecar.url + "/v1.0/state/statestore/a")
        assert (a.content, a.headers["etag"]) == (b'{"x":1}', "e1")
        assert httpx.get(sidecar.url + "/v1.0/state/statestore/b").status_code == 204
        c = httpx.get(sidecar.url + "/v1.0/state/statestore/c")
        assert c.status_code == 200 and "metadata.ttlExpireTime" in c.headers
    finally:
        sidecar.stop()


def test_env_ref_reads_the_environment(tmp_path: Path) -> None:
    yaml = (
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: st\nspec:\n"
        "  type: state.sqlite\n  version: v1\n  metadata:\n  - name: connectionString\n"
        "    envRef: STATE_DB_PATH\n"
    )
    db = tmp_path / "from-env.db"
    sidecar = start_sidecar(tmp_path, resources={"st.yaml": yaml}, env={"STATE_DB_PATH": str(db)})
    try:
        assert httpx.post(sidecar.url + "/v1.0/state/st", json=[{"key": "k", "value": 1}]).status_code == 204
    finally:
        sidecar.stop()
    assert db.exists()
    for variable, problem in (("UNSET_VARIABLE_X", "is not set"), ("DAPR_API_TOKEN", "is refused")):
        folder = write_resources(
            tmp_path / f"res-{variable}", {"st.yaml": yaml.replace("STATE_DB_PATH", variable)}
        )
        result = run_sidecar_to_exit(
            tmp_path, ["--app-id", "a", "--resources-path", str(folder), "--dapr-http-port", str(free_port())]
        )
        assert result.returncode == 1
        assert f"envRef '{variable}' {problem}" in result.stderr


def test_sidecars_started_together_on_a_new_sqlite_file(tmp_path: Path) -> None:
    """Two apps sharing fresh SQLite files, started at the same moment (the samples do this)."""
    shared = tmp_path / "shared"
    resources = {
        "state.yaml": component("statestore", "state.sqlite", {"connectionString": str(shared / "state.db")}),
        "pubsub.yaml": component("pubsub", "pubsub.sqlite", {"connectionString": str(shared / "pubsub.db")}),
    }
    folder = write_resources(tmp_path / "res", resources)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runtime",
                "serve",
                "--app-id",
                f"app{i}",
                "--resources-path",
                str(folder),
                "--dapr-http-port",
                str(free_port()),
                "--metrics-port",
                str(free_port()),
                "--data-dir",
                str(tmp_path / f"d{i}"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    try:
        time.sleep(3)
        for proc in procs:
            assert proc.poll() is None, proc.communicate()[1]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)

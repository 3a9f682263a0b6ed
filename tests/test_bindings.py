"""Bindings (issue 16, part 3): the output API and each component over its real backend, and input
bindings delivering to a real app process."""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.echo_app import EchoApp
from tests.state_support import component, redis_metadata
from tests.support import SidecarProcess, start_sidecar


def invoke(
    sidecar: SidecarProcess, name: str, operation: str, data: object = None, **metadata: str
) -> httpx.Response:
    body: dict[str, object] = {"operation": operation, "metadata": metadata}
    if data is not None:
        body["data"] = data
    return httpx.post(f"{sidecar.url}/v1.0/bindings/{name}", json=body, timeout=10)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EchoApp]:
    app = EchoApp(tmp_path_factory.mktemp("target"))
    yield app
    app.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("files")


@pytest.fixture(scope="module")
def sidecar(
    tmp_path_factory: pytest.TempPathFactory, target: EchoApp, files: Path, redis_url: str, postgres_url: str
) -> Iterator[SidecarProcess]:
    workdir = tmp_path_factory.mktemp("bindings")
    resources = {
        "files.yaml": component("files", "bindings.localstorage", {"rootPath": str(files)}),
        "web.yaml": component("web", "bindings.http", {"url": target.url + "/base"}),
        "lenient.yaml": component("lenient", "bindings.http", {"url": target.url, "errorIfNot2XX": "false"}),
        "kv.yaml": component("kv", "bindings.redis", redis_metadata(redis_url)),
        "sql.yaml": component("sql", "bindings.postgresql", {"connectionString": postgres_url}),
        "sql2.yaml": component("sql2", "bindings.postgres", {"connectionString": postgres_url}),
    }
    started = start_sidecar(workdir, resources=resources)
    yield started
    started.stop()


# --- the API ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "body", "status", "code", "message"),
    [
        (
            "files",
            {"data": 1},
            500,
            "ERR_INVOKE_OUTPUT_BINDING",
            "error invoking output binding files: operation field is missing from request",
        ),
        (
            "nope",
            {"operation": "create"},
            500,
            "ERR_INVOKE_OUTPUT_BINDING",
            "error invoking output binding nope: couldn't find output binding nope",
        ),
        (
            "files",
            {"operation": "exec"},
            500,
            "ERR_INVOKE_OUTPUT_BINDING",
            "error invoking output binding files: binding files does not support operation exec. "
            "supported operations:create get list delete",
        ),
    ],
)
def test_output_errors(
    sidecar: SidecarProcess, name: str, body: dict[str, object], status: int, code: str, message: str
) -> None:
    response = httpx.post(f"{sidecar.url}/v1.0/bindings/{name}", json=body)
    assert (response.status_code, response.json()) == (status, {"errorCode": code, "message": message})


@pytest.mark.parametrize("body", [b"{", b"[1]", b'{"metadata": {"a": 1}}', b'{"operation": 5}', b""])
def test_malformed_bodies(sidecar: SidecarProcess, body: bytes) -> None:
    response = httpx.post(f"{sidecar.url}/v1.0/bindings/files", content=body)
    assert response.status_code == 400
    assert response.json()["errorCode"] == "ERR_MALFORMED_REQUEST"


# --- bindings.localstorage ----------------------------------------------------------------------


def test_localstorage_create_get_list_delete(sidecar: SidecarProcess, files: Path) -> None:
    created = invoke(sidecar, "files", "create", "aGk=", fileName="sub/hello.txt")
    assert (created.status_code, created.json()) == (200, {"fileName": "sub/hello.txt"})
    assert created.headers["content-type"] == "application/json"
    assert (files / "sub" / "hello.txt").read_bytes() == b"hi"  # JSON-unquoted, then base64-decoded
    assert invoke(sidecar, "files", "create", {"a": [1, "x"]}, fileName="doc.json").status_code == 200
    assert (files / "doc.json").read_bytes() == b'{"a":[1,"x"]}'
    fetched = invoke(sidecar, "files", "get", fileName="sub/hello.txt")
    assert (fetched.status_code, fetched.content) == (200, b"hi")
    # PUT is the same call.
    put = httpx.put(
        f"{sidecar.url}/v1.0/bindings/files", json={"operation": "get", "metadata": {"fileName": "doc.json"}}
    )
    assert put.content == b'{"a":[1,"x"]}'
    listed = invoke(sidecar, "files", "list")
    assert sorted(listed.json()) == sorted([str(files / "sub" / "hello.txt"), str(files / "doc.json")])
    unnamed = invoke(sidecar, "files", "create", "plain text!")
    assert (files / unnamed.json()["fileName"]).read_bytes() == b"plain text!"
    deleted = invoke(sidecar, "files", "delete", fileName="sub/hello.txt")
    assert (deleted.status_code, deleted.content) == (204, b"")
    missing = invoke(sidecar, "files", "get", fileName="sub/hello.txt")
    assert missing.status_code == 500
    assert (
        missing.json()["message"]
        == f"error invoking output binding files: file not found: {files / 'sub' / 'hello.txt'}"
    )


@pytest.mark.parametrize(
    "name", ["../escaped.txt", "../../etc/passwd", "/etc/passwd", "sub/../../escaped.txt", "link/escaped.txt"]
)
def test_localstorage_refuses_paths_outside_its_root(sidecar: SidecarProcess, files: Path, name: str) -> None:
    outside = files.parent / f"outside-{uuid.uuid4().hex[:6]}"
    outside.mkdir()
    if not (files / "link").exists():
        os.symlink(outside, files / "link")
    for operation in ("create", "get", "delete"):
        response = invoke(sidecar, "files", operation, "x", fileName=name)
        assert response.status_code == 500, (operation, response.text)
        assert "leads outside rootPath" in response.json()["message"]
    assert not (files.parent / "escaped.txt").exists()
    assert list(outside.iterdir()) == []


# --- bindings.http ------------------------------------------------------------------------------


def test_http_post_with_path_headers_and_response_metadata(sidecar: SidecarProcess, target: EchoApp) -> None:
    response = invoke(
        sidecar, "web", "post", {"order": 7}, path="/orders", **{"X-Custom": "yes", "lowercase": "no"}
    )
    assert response.status_code == 200
    assert response.headers["metadata.statusCode"] == "200"
    assert response.headers["metadata.status"] == "200 OK"
    assert response.headers["metadata.X-Echo"] == "yes"
    echoed = response.json()
    assert (echoed["method"], echoed["path"]) == ("POST", "/base/orders")
    assert echoed["body"] == '{"order":7}'
    sent = {k.lower(): v for k, v in echoed["headers"].items()}
    assert sent["x-custom"] == "yes"
    assert "lowercase" not in sent
    assert sent["content-type"] == "application/json; charset=utf-8"
    assert sent["accept"] == "application/json; charset=utf-8"


def test_http_get_sends_no_body_and_create_is_post(sidecar: SidecarProcess, target: EchoApp) -> None:
    got = invoke(sidecar, "web", "get", "ignored", path="items")
    assert (got.json()["method"], got.json()["path"], got.json()["body"]) == ("GET", "/base/items", "")
    created = invoke(sidecar, "web", "create", "text")
    assert (created.json()["method"], created.json()["body"]) == ("POST", '"text"')


def test_http_non_2xx_is_an_error_with_its_metadata(sidecar: SidecarProcess, target: EchoApp) -> None:
    target.answer({"GET /base/missing": 404, "GET /missing": 404})
    failed = invoke(sidecar, "web", "get", path="/missing")
    assert failed.status_code == 500
    assert failed.json() == {
        "errorCode": "ERR_INVOKE_OUTPUT_BINDING",
        "message": "error invoking output binding web: received status code 404",
    }
    assert failed.headers["metadata.statusCode"] == "404"
    per_call = invoke(sidecar, "web", "get", path="/missing", errorIfNot2XX="false")
    assert (per_call.status_code, per_call.headers["metadata.statusCode"]) == (200, "404")
    lenient = invoke(sidecar, "lenient", "get", path="/missing")
    assert (lenient.status_code, lenient.headers["metadata.status"]) == (200, "404 Not Found")


# --- bindings.redis -----------------------------------------------------------------------------


def test_redis_operations(sidecar: SidecarProcess, redis_url: str) -> None:
    direct = redis.Redis.from_url(redis_url)
    key = f"binding-{uuid.uuid4().hex[:8]}"
    assert invoke(sidecar, "kv", "create", {"v": 1}, key=key, ttlInSeconds="100").status_code == 204
    assert direct.get(key) == b'{"v":1}'
    assert 0 < direct.ttl(key) <= 100
    got = invoke(sidecar, "kv", "get", key=key)
    assert (got.status_code, got.content) == (200, b'{"v":1}')
    assert invoke(sidecar, "kv", "get", key=key, delete="true").content == b'{"v":1}'
    missing = invoke(sidecar, "kv", "get", key=key)
    assert (missing.status_code, missing.content) == (200, b"")
    for _ in range(3):
        assert invoke(sidecar, "kv", "increment", key=key + "n").status_code == 204
    assert direct.get(key + "n") == b"3"
    assert invoke(sidecar, "kv", "delete", key=key + "n").status_code == 204
    assert direct.exists(key + "n") == 0
    no_key = invoke(sidecar, "kv", "get")
    assert (
        no_key.json()["message"]
        == "error invoking output binding kv: redis binding: missing key in request metadata"
    )


# --- bindings.postgresql ------------------------------------------------------------------------


def test_postgresql_exec_query_and_close(sidecar: SidecarProcess) -> None:
    table = f"b_{uuid.uuid4().hex[:8]}"
    created = invoke(
        sidecar,
        "sql",
        "exec",
        sql=f"CREATE TABLE {table} (id int PRIMARY KEY, name text, score numeric, at timestamptz)",
    )
    assert created.status_code == 200
    assert created.content == b""
    assert created.headers["metadata.operation"] == "exec"
    assert created.headers["metadata.start-time"].endswith("Z")
    assert created.headers["metadata.duration"][-1] == "s"
    params = json.dumps([1, "ann", 2.5, "2024-01-02T03:04:05Z"])
    inserted = invoke(
        sidecar, "sql", "exec", sql=f"INSERT INTO {table} VALUES ($1, $2, $3, $4)", params=params
    )
    assert inserted.headers["metadata.rows-affected"] == "1"
    assert (
        invoke(
            sidecar,
            "sql2",
            "exec",
            sql=f"INSERT INTO {table} (id, name) VALUES ($1, $2)",
            params='["2", "bob"]',
        ).status_code
        == 200
    )
    rows = invoke(sidecar, "sql", "query", sql=f"SELECT id, name, score, at FROM {table} ORDER BY id")
    assert rows.status_code == 200
    assert rows.json() == [[1, "ann", 2.5, "2024-01-02T03:04:05Z"], [2, "bob", None, None]]
    bad = invoke(sidecar, "sql", "query", sql=f"SELECT nothing FROM {table}")
    assert bad.status_code == 500 and "error executing query" in bad.json()["message"]
    assert invoke(sidecar, "sql", "exec").json()["message"].endswith("required metadata not set: sql")
    assert (
        "failed to unserialize into an array"
        in invoke(sidecar, "sql", "exec", sql="SELECT 1", params="{}").json()["message"]
    )
    assert invoke(sidecar, "sql2", "close").status_code == 204
    closed = invoke(sidecar, "sql2", "query", sql="SELECT 1")
    assert closed.json()["message"] == "error invoking output binding sql2: component is closed"
    assert invoke(sidecar, "sql", "exec", sql=f"DROP TABLE {table}").status_code == 200


# --- input bindings -----------------------------------------------------------------------------


def test_cron_ticks_reach_the_app_after_the_options_probe(tmp_path: Path) -> None:
    app = EchoApp(tmp_path / "app")
    resources = {
        "tick.yaml": component("tick", "bindings.cron", {"schedule": "@every 1s"}),
        "secs.yaml": component(
            "secs", "bindings.cron", {"schedule": "*/1 * * * * *", "route": "/every-second"}
        ),
        "refused.yaml": component("refused", "bindings.cron", {"schedule": "@every 1s"}),
        "told.yaml": component("told", "bindings.cron", {"schedule": "@every 1s", "direction": "input"}),
    }
    app.answer({"OPTIONS /refused": 404, "OPTIONS /told": 404, "OPTIONS /tick": 405})
    sidecar = start_sidecar(tmp_path, resources=resources, extra_args=["--app-port", str(app.port)])
    try:
        ticks = app.wait_for(2, "POST", "/tick", timeout=6)
        assert app.seen("OPTIONS", "/tick")[0].header("content-type") == "application/json"
        assert ticks[0].body == ""
        assert ticks[0].header("content-type") == "application/json"
        assert (ticks[0].header("Readtimeutc") or "").endswith("+0000 UTC")
        assert ticks[0].header("Timezone") == "Local"
        app.wait_for(2, "POST", "/every-second", timeout=6)
        # An explicit direction skips the question; a 404 answer means "not for me".
        app.wait_for(1, "POST", "/told", timeout=6)
        assert app.seen("OPTIONS", "/told") == []
        assert app.seen("POST", "/refused") == []
        assert "app has not subscribed to binding refused" in sidecar.log()
    finally:
        sidecar.stop()
        app.stop()


def test_bad_cron_schedule_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="invalid schedule format 'every day'"):
        start_sidecar(
            tmp_path,
            resources={"c.yaml": component("c", "bindings.cron", {"schedule": "every day"})},
            timeout=10,
        )


def test_rabbitmq_queue_output_to_input_and_the_app_decides_the_ack(
    tmp_path: Path, rabbitmq_url: str
) -> None:
    queue = f"binding-{uuid.uuid4().hex[:8]}"
    app = EchoApp(tmp_path / "app", {"POST /jobs": 500})
    metadata = {"host": rabbitmq_url, "queueName": queue, "deleteWhenUnused": "true", "route": "/jobs"}
    sidecar = start_sidecar(
        tmp_path,
        resources={"q.yaml": component("jobs", "bindings.rabbitmq", metadata)},
        extra_args=["--app-port", str(app.port)],
    )
    try:
        app.wait_for(1, "OPTIONS", "/jobs")
        sent = invoke(sidecar, "jobs", "create", {"job": 1}, kind="demo")
        assert sent.status_code == 204
        # Refused by the app: it comes back until the app takes it.
        app.wait_for(2, "POST", "/jobs", timeout=10)
        app.answer({"POST /jobs": 200})
        time.sleep(1.5)
        delivered = app.seen("POST", "/jobs")
        count = len(delivered)
        assert all(d.body == '{"job":1}' and d.header("Kind") == "demo" for d in delivered)
        time.sleep(2)
        assert len(app.seen("POST", "/jobs")) == count, "an accepted message came back"
    finally:
        sidecar.stop()
        app.stop()


def test_localstorage_base64_rule_is_daprds(sidecar: SidecarProcess, files: Path) -> None:
    # A plain string that happens to be valid base64 is decoded too, as daprd does.
    invoke(sidecar, "files", "create", "abcd", fileName="b64.txt")
    assert (files / "b64.txt").read_bytes() == base64.b64decode("abcd")


def test_input_bindings_follow_hot_reload(tmp_path: Path) -> None:
    """A cron binding added after the app was found starts delivering; removed, it stops."""
    app = EchoApp(tmp_path / "app")
    sidecar = start_sidecar(
        tmp_path,
        resources={"s.yaml": component("statestore", "state.in-memory", {})},
        extra_args=["--app-port", str(app.port)],
    )
    folder = tmp_path / "resources"
    try:
        (folder / "tick.yaml").write_text(component("late", "bindings.cron", {"schedule": "@every 1s"}))
        app.wait_for(2, "POST", "/late", timeout=15)
        assert app.seen("OPTIONS", "/late")
        (folder / "tick.yaml").unlink()
        wait = time.monotonic() + 10
        while "removed bindings late" not in sidecar.log():
            assert time.monotonic() < wait, sidecar.log()
            time.sleep(0.1)
        time.sleep(0.5)
        count = len(app.seen("POST", "/late"))
        time.sleep(2.5)
        assert len(app.seen("POST", "/late")) == count
    finally:
        sidecar.stop()
        app.stop()

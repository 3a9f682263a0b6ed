"""Service invocation through two real sidecars (mTLS on, embedded SQLite name resolution)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import signal
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from runtime.invocation.mtls import create_ca
from tests.invoke_support import Pair, internal_port, invoke_pair, start_app, start_invoke_sidecar
from tests.support import SidecarProcess, run_sidecar_to_exit

VERBS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    with invoke_pair(tmp_path_factory.mktemp("invoke"), "b1", "inv-a", "inv-b") as found:
        yield found


def _echo(response: httpx.Response) -> dict[str, object]:
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def _headers(seen: dict[str, object]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in seen["headers"]:  # type: ignore[attr-defined]
        found.setdefault(name.lower(), []).append(value)
    return found


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_reaches_the_app_with_path_query_headers_and_body(pair: Pair, verb: str) -> None:
    caller, _, _ = pair
    with caller.client() as client:
        response = client.request(
            verb,
            "/v1.0/invoke/inv-b/method/echo/orders/1?x=1&y=%2F",
            content=b"payload" if verb not in ("GET", "OPTIONS") else None,
            headers={
                "x-user": "kept",
                "content-type": "text/plain",
                "connection": "keep-alive, x-hop",
                "x-hop": "dropped",
                "dapr-caller-app-id": "forged",
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            },
        )
    seen = _echo(response)
    assert response.headers["x-instance"] == "b1"
    assert seen["method"] == verb
    assert seen["path"] == "/echo/orders/1?x=1&y=%2F"
    if verb not in ("GET", "OPTIONS"):
        assert seen["body"] == "payload"
    headers = _headers(seen)
    assert headers["x-user"] == ["kept"]
    assert "x-hop" not in headers
    assert headers["dapr-caller-app-id"] == ["inv-a"]  # the forged copy is dropped
    assert headers["dapr-callee-app-id"] == ["inv-b"]
    assert headers["dapr-caller-namespace"] == [""]
    assert "x-forwarded-for" in headers and "forwarded" in headers
    # The sidecar's own span continues the caller's trace.
    assert headers["traceparent"][0].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert headers["traceparent"][0] != "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_head_answers_the_apps_status_and_headers(pair: Pair) -> None:
    caller, _, _ = pair
    with caller.client() as client:
        response = client.head("/v1.0/invoke/inv-b/method/echo/x")
    assert response.status_code == 200
    assert response.headers["x-instance"] == "b1"


def test_the_header_forms_work_on_any_path_and_the_namespace_form(pair: Pair) -> None:
    caller, _, _ = pair
    basic = base64.b64encode(b"dapr-app-id:inv-b").decode()
    with caller.client() as client:
        by_header = _echo(client.post("/echo/a/b?q=1", headers={"dapr-app-id": "inv-b"}, content=b"x"))
        by_basic = _echo(client.get("/echo/basic", headers={"authorization": f"Basic {basic}"}))
        by_namespace = _echo(client.get("/v1.0/invoke/inv-b.default/method/echo/ns"))
        # A Dapr API path is still the API, header or not.
        metadata = client.get("/v1.0/metadata", headers={"dapr-app-id": "inv-b"})
        too_many_dots = client.get("/v1.0/invoke/inv-b.x.y/method/echo")
        no_method = client.get("/v1.0/invoke/inv-b")
    assert by_header["path"] == "/echo/a/b?q=1"
    assert "dapr-app-id" not in _headers(by_header)
    assert by_basic["path"] == "/echo/basic"
    assert by_namespace["path"] == "/echo/ns"
    assert metadata.json()["id"] == "inv-a"
    assert too_many_dots.status_code == 500
    assert too_many_dots.json() == {
        "errorCode": "ERR_DIRECT_INVOKE",
        "message": "failed to invoke, id: inv-b.x.y, err: invalid app id inv-b.x.y",
    }
    assert no_method.status_code == 404
    assert no_method.json()["errorCode"] == "ERR_DIRECT_INVOKE"


def test_method_is_decoded_and_dot_segments_resolved(pair: Pair) -> None:
    caller, _, _ = pair
    with caller.client() as client:
        seen = _echo(client.get("/v1.0/invoke/inv-b/method/echo%2Fa/x/..%2Fb"))
        bad = client.get("/v1.0/invoke/inv-b/method/echo%23frag")
    assert seen["path"] == "/echo/a/b"
    assert bad.status_code == 500
    assert "invalid method" in bad.json()["message"]


def test_the_apps_status_headers_and_body_come_back_unchanged(pair: Pair) -> None:
    caller, _, _ = pair
    with caller.client() as client:
        teapot = client.get("/v1.0/invoke/inv-b/method/status/418")
        error = client.post("/v1.0/invoke/inv-b/method/status/503")
        redirect = client.get("/v1.0/invoke/inv-b/method/redirect")
        zipped = client.get("/v1.0/invoke/inv-b/method/gzip", headers={"accept-encoding": "gzip"})
    assert teapot.status_code == 418
    assert teapot.text == "status 418"
    assert teapot.headers["x-custom"] == "kept"
    assert teapot.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]
    assert error.status_code == 503 and error.text == "status 503"
    assert redirect.status_code == 302  # not followed
    assert redirect.headers["location"] == "/echo/elsewhere"
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.content == b"zipped body"  # httpx decoded the untouched gzip body
    assert gzip.compress(b"zipped body")[:2] == b"\x1f\x8b"


def _rss(process: SidecarProcess) -> int:
    return int(psutil.Process(process.proc.pid).memory_info().rss)


def _hundred_mb() -> tuple[Callable[[], Iterator[bytes]], str]:
    """A 100 MB body, sent in 1 MB blocks as it is read, and its SHA-256."""
    block = os.urandom(1024 * 1024)
    expected = hashlib.sha256()
    for _ in range(100):
        expected.update(block)

    def body() -> Iterator[bytes]:
        for _ in range(100):
            yield block

    return body, expected.hexdigest()


def test_a_100_mb_body_streams_both_ways_without_being_held(pair: Pair) -> None:
    caller, target, _ = pair
    size = 100 * 1024 * 1024
    body, _ = _hundred_mb()
    before = {p.app_id: _rss(p) for p in (caller, target)}
    with httpx.Client(base_url=caller.url, timeout=120) as client:
        # Chunked (no Content-Length) upload; the body limit is the sidecar's, raised for this.
        up = client.post("/v1.0/invoke/inv-b/method/sink", content=body())
        assert up.status_code == 413  # the default 4Mi limit applies to invocation too
    assert up.json()["errorCode"] == "ERR_BODY_READ"

    # The app's /source/<n> repeats bytes 0..255 for n bytes.
    pattern = bytes(range(256)) * 256
    expected = hashlib.sha256()
    for _ in range(size // len(pattern)):
        expected.update(pattern)
    with httpx.Client(base_url=caller.url, timeout=120) as client:
        received = 0
        digest = hashlib.sha256()
        with client.stream("GET", f"/v1.0/invoke/inv-b/method/source/{size}") as down:
            assert down.status_code == 200
            for chunk in down.iter_raw():
                received += len(chunk)
                digest.update(chunk)
    assert received == size
    assert digest.hexdigest() == expected.hexdigest()
    for process in (caller, target):
        grown = _rss(process) - before[process.app_id]
        assert grown < 40 * 1024 * 1024, f"{process.app_id} grew by {grown} bytes"


def test_a_100_mb_upload_streams_through(tmp_path: Path) -> None:
    app = start_app("big")
    target = start_invoke_sidecar(tmp_path, "inv-big", app, ["--max-body-size", "200Mi"])
    caller = start_invoke_sidecar(tmp_path, "inv-big-caller", None, ["--max-body-size", "200Mi"])
    try:
        body, expected = _hundred_mb()
        before = {p.app_id: _rss(p) for p in (caller, target)}
        with httpx.Client(base_url=caller.url, timeout=120) as client:
            up = client.post("/v1.0/invoke/inv-big/method/sink", content=body())
        assert up.status_code == 200, up.text
        assert up.json() == {"size": 100 * 1024 * 1024, "sha256": expected}
        for process in (caller, target):
            grown = _rss(process) - before[process.app_id]
            assert grown < 40 * 1024 * 1024, f"{process.app_id} grew by {grown} bytes"
    finally:
        caller.stop()
        target.stop()
        app.stop()


def test_unknown_app_and_an_app_that_is_not_listening(pair: Pair, tmp_path: Path) -> None:
    caller, _, _ = pair
    gone = start_app("gone")
    no_app = start_invoke_sidecar(tmp_path, "inv-noapp")
    down = start_invoke_sidecar(tmp_path, "inv-down", gone)
    gone.stop()
    try:
        with caller.client() as client:
            unknown = client.get("/v1.0/invoke/inv-nobody/method/x")
            not_initialized = client.get("/v1.0/invoke/inv-noapp/method/x")
            unreachable = client.get("/v1.0/invoke/inv-down/method/x")
    finally:
        no_app.stop()
        down.stop()
    assert unknown.status_code == 500
    assert unknown.json() == {
        "errorCode": "ERR_DIRECT_INVOKE",
        "message": "failed to invoke, id: inv-nobody, err: no host found with the given ID",
    }
    assert not_initialized.status_code == 500
    assert not_initialized.json()["message"] == (
        "failed to invoke, id: inv-noapp, err: "
        "rpc error: code = Internal desc = app channel is not initialized"
    )
    assert unreachable.status_code == 500
    assert unreachable.json()["message"].startswith(
        "failed to invoke, id: inv-down, err: rpc error: code = Internal desc = error invoking app channel: "
    )


def test_a_dead_sidecar_is_retried_three_times_then_reported(pair: Pair, tmp_path: Path) -> None:
    caller, _, _ = pair
    victim = start_invoke_sidecar(tmp_path, "inv-dead")
    victim.kill()  # its registration stays fresh for a few seconds
    started = time.monotonic()
    with caller.client() as client:
        response = client.get("/v1.0/invoke/inv-dead/method/x")
    took = time.monotonic() - started
    assert response.status_code == 500
    message = response.json()["message"]
    assert message.startswith(
        "failed to invoke, id: inv-dead, err: failed to invoke target inv-dead after 3 retries. "
        "Error: rpc error: code = Unavailable desc = "
    ), message
    assert 2.5 < took < 8


def test_a_self_call_goes_straight_to_the_app(pair: Pair) -> None:
    _, target, _ = pair
    with target.client() as client:
        seen = _echo(client.get("/v1.0/invoke/inv-b/method/echo/self"))
    headers = _headers(seen)
    assert headers["dapr-caller-app-id"] == ["inv-b"]
    assert "x-forwarded-for" not in headers


def test_a_sidecar_with_a_certificate_from_another_ca_is_refused(pair: Pair, tmp_path: Path) -> None:
    _, target, _ = pair
    foreign = tmp_path / "foreign-ca"
    create_ca(foreign)
    stranger = start_invoke_sidecar(tmp_path, "inv-stranger", None, ["--ca-dir", str(foreign)])
    try:
        with httpx.Client(base_url=stranger.url, timeout=30) as client:
            response = client.get("/v1.0/invoke/inv-b/method/echo/x")
    finally:
        stranger.stop()
    assert response.status_code == 500
    assert "Unavailable" in response.json()["message"]
    # Straight at the internal port: no client certificate, or plain HTTP, gets nothing.
    port = internal_port(target)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with pytest.raises(httpx.HTTPError):
        httpx.get(
            f"https://127.0.0.1:{port}/echo/x",
            headers={"dapr-callee-app-id": "inv-b"},
            verify=context,
            timeout=5,
        ).raise_for_status()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/echo/x", headers={"dapr-callee-app-id": "inv-b"}, timeout=5)


def test_plain_http_between_sidecars_only_on_loopback(tmp_path: Path) -> None:
    result = run_sidecar_to_exit(
        tmp_path,
        [
            "--app-id",
            "inv-plain",
            "--dapr-http-port",
            "0",
            "--metrics-port",
            "0",
            "--enable-mtls=false",
            "--dapr-internal-grpc-listen-address",
            "0.0.0.0",
        ],
        timeout=60,
    )
    assert result.returncode == 1
    assert "may only listen on loopback" in result.stderr


def test_plain_http_on_loopback_when_turned_off(tmp_path: Path) -> None:
    app = start_app("plain")
    target = start_invoke_sidecar(tmp_path, "inv-plain-b", app, ["--enable-mtls=false"])
    caller = start_invoke_sidecar(tmp_path, "inv-plain-a", None, ["--enable-mtls=false"])
    try:
        with caller.client() as client:
            seen = _echo(client.get("/v1.0/invoke/inv-plain-b/method/echo/plain"))
        assert seen["path"] == "/echo/plain"
        assert "mTLS between sidecars is off" in target.log()
    finally:
        caller.stop()
        target.stop()
        app.stop()


def test_an_instance_killed_is_skipped_and_expires(tmp_path: Path) -> None:
    apps = [start_app("one"), start_app("two")]
    targets = [start_invoke_sidecar(tmp_path / str(i), "inv-multi", app) for i, app in enumerate(apps)]
    caller = start_invoke_sidecar(tmp_path, "inv-multi-caller")
    try:
        with caller.client() as client:
            seen = {
                client.get("/v1.0/invoke/inv-multi/method/echo/x").headers["x-instance"] for _ in range(8)
            }
            assert seen == {"one", "two"}  # round-robin over both instances
            targets[1].proc.send_signal(signal.SIGKILL)
            targets[1].proc.wait()
            answers = [client.get("/v1.0/invoke/inv-multi/method/echo/x") for _ in range(10)]
            assert [a.status_code for a in answers] == [200] * 10
            assert {a.headers["x-instance"] for a in answers} == {"one"}
        # The killed sidecar's row stops counting within updateInterval (5 s).
        import sqlite3

        db = Path(os.environ["PILLION_HOME"]) / "nameresolution.db"
        deadline = time.monotonic() + 10
        while True:
            with sqlite3.connect(db) as conn:
                live = conn.execute(
                    "SELECT count(*) FROM hosts WHERE app_id = 'inv-multi' AND ? - last_update < 5",
                    (int(time.time()),),
                ).fetchone()[0]
            if live == 1:
                break
            assert time.monotonic() < deadline, "the killed instance never expired"
            time.sleep(0.5)
    finally:
        caller.stop()
        for target in targets:
            target.stop()
        for app in apps:
            app.stop()

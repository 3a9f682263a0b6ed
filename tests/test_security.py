"""API token enforcement (as daprd: https://docs.dapr.io/operations/security/api-token/) and the
loopback-only default."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.state_support import component
from tests.support import SidecarProcess, free_port, run_sidecar_to_exit, start_sidecar

TOKEN = "s3cret-token"

# One request per route group; every one must be refused without the token.
GUARDED = [
    ("GET", "/v1.0/metadata"),
    ("PUT", "/v1.0/metadata/k"),
    ("GET", "/v1.0/state/statestore/k"),
    ("POST", "/v1.0/state/statestore"),
    ("DELETE", "/v1.0/state/statestore/k"),
    ("POST", "/v1.0/state/statestore/bulk"),
    ("POST", "/v1.0/state/statestore/transaction"),
    ("POST", "/v1.0-alpha1/state/statestore/query"),
    ("POST", "/v1.0/publish/pubsub/topic"),
    ("GET", "/v1.0/secrets/store/name"),
    ("POST", "/v1.0/shutdown"),
    ("GET", "/v1.0/unknown"),
    ("POST", "/v1.0/healthz"),
]


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    workdir = tmp_path_factory.mktemp("token")
    proc = start_sidecar(
        workdir,
        resources={"s.yaml": component("statestore", "state.in-memory", {})},
        env={"DAPR_API_TOKEN": TOKEN},
    )
    yield proc
    proc.stop()


@pytest.mark.parametrize(("method", "path"), GUARDED)
def test_every_route_needs_the_token(sidecar: SidecarProcess, method: str, path: str) -> None:
    for headers in ({}, {"dapr-api-token": "wrong"}, {"dapr-api-token": ""}):
        response = httpx.request(method, sidecar.url + path, headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert response.text == "invalid api token\n"


def test_health_probes_stay_open(sidecar: SidecarProcess) -> None:
    assert httpx.get(sidecar.url + "/v1.0/healthz").status_code == 204
    assert httpx.get(sidecar.url + "/v1.0/healthz/outbound").status_code == 204


def test_the_right_token_passes(sidecar: SidecarProcess) -> None:
    with sidecar.client(headers={"dapr-api-token": TOKEN}) as api:
        assert api.post("/v1.0/state/statestore", json=[{"key": "k", "value": 1}]).status_code == 204
        assert api.get("/v1.0/state/statestore/k").content == b"1"
        assert api.get("/v1.0/metadata").json()["id"] == "testapp"


def test_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    proc = start_sidecar(tmp_path, extra_args=["--api-token-file", str(token_file)])
    try:
        assert httpx.get(proc.url + "/v1.0/metadata").status_code == 401
        assert httpx.get(proc.url + "/v1.0/metadata", headers={"dapr-api-token": TOKEN}).status_code == 200
    finally:
        proc.stop()


def test_default_bind_is_loopback_only(tmp_path: Path) -> None:
    proc = start_sidecar(tmp_path)
    try:
        addresses = {a for *_, (a, *_) in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
        for address in addresses - {"127.0.0.1", "127.0.1.1"}:
            with pytest.raises(httpx.TransportError):
                httpx.get(f"http://{address}:{proc.port}/v1.0/healthz", timeout=1)
        assert "127.0.0.1" in proc.log()
    finally:
        proc.stop()


def test_remote_binding_needs_an_explicit_flag(tmp_path: Path) -> None:
    port = str(free_port())
    args = ["--app-id", "a", "--dapr-http-port", port, "--dapr-listen-addresses", "0.0.0.0"]
    refused = run_sidecar_to_exit(tmp_path, [*args, "--data-dir", str(tmp_path / "d")])
    assert refused.returncode == 1
    assert "--allow-remote-access" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_remote_binding_without_a_token_warns(tmp_path: Path) -> None:
    proc = start_sidecar(tmp_path, extra_args=["--dapr-listen-addresses", "0.0.0.0", "--allow-remote-access"])
    try:
        assert "without an API token" in proc.log()
    finally:
        proc.stop()

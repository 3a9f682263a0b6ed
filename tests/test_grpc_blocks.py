"""Bindings, lock and configuration reads over gRPC with the official Python SDK (issue 16)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError

from tests.private_redis import PrivateRedis
from tests.state_support import component
from tests.support import SidecarProcess, start_sidecar


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory, redis_server: PrivateRedis) -> Iterator[SidecarProcess]:
    workdir = tmp_path_factory.mktemp("grpc-blocks")
    resources = {
        "files.yaml": component("files", "bindings.localstorage", {"rootPath": str(workdir / "files")}),
        "lock.yaml": component("lockstore", "lock.sqlite", {"connectionString": str(workdir / "locks.db")}),
        "config.yaml": component("config", "configuration.redis", {"redisHost": redis_server.address}),
    }
    process = start_sidecar(workdir, app_id="grpcblocks", resources=resources)
    yield process
    process.stop()


@pytest.fixture
def client(sidecar: SidecarProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[DaprClient]:
    monkeypatch.setenv("DAPR_GRPC_PORT", str(sidecar.grpc_port))
    monkeypatch.setenv("DAPR_HTTP_PORT", str(sidecar.port))
    with DaprClient() as found:
        yield found


def test_invoke_binding_hands_the_bytes_over_as_they_are(client: DaprClient, sidecar: SidecarProcess) -> None:
    created = client.invoke_binding("files", "create", b"raw bytes!", {"fileName": "g.txt"})
    assert created.json() == {"fileName": "g.txt"}
    # No JSON encoding over gRPC (HTTP would have stored the quoted string).
    assert (sidecar.data_dir.parent / "files" / "g.txt").read_bytes() == b"raw bytes!"
    assert client.invoke_binding("files", "get", b"", {"fileName": "g.txt"}).data == b"raw bytes!"
    # This SDK call lets the gRPC error through as it is.
    with pytest.raises(grpc.RpcError) as failed:
        client.invoke_binding("nope", "create", b"x")
    error = failed.value
    assert isinstance(error, grpc.Call)
    assert error.code() is grpc.StatusCode.INTERNAL
    assert error.details() == "error invoking output binding nope: couldn't find output binding nope"


def test_try_lock_and_unlock(client: DaprClient) -> None:
    assert client.try_lock("lockstore", "res", "alice", 30).success
    assert not client.try_lock("lockstore", "res", "bob", 30).success
    assert client.unlock("lockstore", "res", "bob").status.name == "lock_belongs_to_others"
    assert client.unlock("lockstore", "res", "alice").status.name == "success"
    with pytest.raises(grpc.RpcError) as failed:
        client.try_lock("unknown", "res", "alice", 30)
    assert isinstance(failed.value, grpc.Call)
    assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert failed.value.details() == "lock store unknown not found"


def test_get_configuration(client: DaprClient, redis_server: PrivateRedis) -> None:
    redis_server.client.set("greeting", "hello||v7")
    found = client.get_configuration("config", ["greeting", "absent"])
    assert found.items["greeting"].value == "hello"
    assert found.items["greeting"].version == "v7"
    assert "absent" not in found.items


def test_unknown_configuration_store(client: DaprClient, tmp_path: Path) -> None:
    with pytest.raises((grpc.RpcError, DaprGrpcError)) as failed:
        client.get_configuration("nope", ["a"])
    assert "configuration store nope not found" in str(failed.value)

"""Redis Sentinel (``failover: true``) for state.redis and pubsub.redis, against real processes.

Each test starts its own master, replica and sentinel (redis-server --sentinel) on free ports, with
passwords on both the data nodes and the sentinel, then kills the master with SIGKILL and checks
that the sidecar carries on against the replica the sentinel promoted.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tests.pubsub_support import SubscriberApp, running, subscription
from tests.state_support import component
from tests.support import free_port, run_sidecar_to_exit, start_sidecar

MASTER_NAME = "pillion-master"
REDIS_PASSWORD = "data-nodes-password"
SENTINEL_PASSWORD = "sentinel-password"


@dataclass
class Topology:
    master_port: int
    replica_port: int
    sentinel_port: int
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=REDIS_PASSWORD, socket_timeout=5)

    def sentinel(self) -> redis.Redis:
        return redis.Redis(port=self.sentinel_port, password=SENTINEL_PASSWORD, socket_timeout=5)

    def master_address(self) -> int:
        with self.sentinel() as client:
            _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
            return int(port)

    def metadata(self, **extra: str) -> dict[str, str]:
        return {
            "redisHost": f"127.0.0.1:{self.sentinel_port}",
            "failover": "true",
            "sentinelMasterName": MASTER_NAME,
            "redisPassword": REDIS_PASSWORD,
            "sentinelPassword": SENTINEL_PASSWORD,
            **extra,
        }

    def kill_master_and_wait_for_promotion(self, timeout: float = 20) -> None:
        """SIGKILL the master once the replica has every write, then wait for the sentinel to
        name the replica as master."""
        with self.node(self.master_port) as master:
            assert master.wait(1, 5000) == 1, "the replica did not catch up"
        self.procs["master"].kill()
        self.procs["master"].wait()
        deadline = time.monotonic() + timeout
        while self.master_address() != self.replica_port:
            assert time.monotonic() < deadline, "the sentinel did not promote the replica"
            time.sleep(0.1)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is needed (apt-get install redis-server)")
    nodes = Topology(free_port(), free_port(), free_port())
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    auth = ["--requirepass", REDIS_PASSWORD, "--masterauth", REDIS_PASSWORD]

    def start(name: str, args: list[str]) -> None:
        folder = tmp_path / name
        folder.mkdir()
        nodes.procs[name] = subprocess.Popen(
            [server, *args, "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def answers(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        # No wait for more replicas before the first sync (Redis waits 5 s by default).
        start("master", ["--port", str(nodes.master_port), *common, *auth, "--repl-diskless-sync-delay", "0"])
        wait_until(lambda: answers(nodes.node(nodes.master_port)), "the master did not start")
        replica_of = ["--replicaof", "127.0.0.1", str(nodes.master_port)]
        start("replica", ["--port", str(nodes.replica_port), *common, *auth, *replica_of])
        wait_until(
            lambda: (
                answers(nodes.node(nodes.replica_port))
                and nodes.node(nodes.replica_port).info("replication")["master_link_status"] == "up"
            ),
            "the replica did not sync",
        )
        # The sentinel rewrites its configuration file, so it gets one of its own.
        config = tmp_path / "sentinel.conf"
        config.write_text(
            f"port {nodes.sentinel_port}\nbind 127.0.0.1\nrequirepass {SENTINEL_PASSWORD}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {nodes.master_port} 1\n"
            f"sentinel auth-pass {MASTER_NAME} {REDIS_PASSWORD}\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} 500\n"
            f"sentinel failover-timeout {MASTER_NAME} 5000\n"
        )
        start("sentinel", [str(config), "--sentinel"])

        def knows_replica() -> bool:
            try:
                with nodes.sentinel() as client:
                    return len(client.execute_command("SENTINEL", "REPLICAS", MASTER_NAME)) == 1
            except redis.ConnectionError:
                return False

        wait_until(knows_replica, "the sentinel did not find the replica")
        yield nodes
    finally:
        for proc in nodes.procs.values():
            proc.kill()
            proc.wait()


def test_state_follows_the_master_through_a_failover(tmp_path: Path, topology: Topology) -> None:
    resources = {"state.yaml": component("statestore", "state.redis", topology.metadata())}
    sidecar = start_sidecar(tmp_path, resources=resources)
    try:
        with sidecar.client() as client:
            assert (
                client.post("/v1.0/state/statestore", json=[{"key": "before", "value": 1}]).status_code == 204
            )
            topology.kill_master_and_wait_for_promotion()
            # Calls may fail while the pools find the new master; then they go through.
            deadline = time.monotonic() + 15
            while (
                client.post("/v1.0/state/statestore", json=[{"key": "after", "value": 2}]).status_code != 204
            ):
                assert time.monotonic() < deadline, sidecar.log()
                time.sleep(0.1)
            assert client.get("/v1.0/state/statestore/before").json() == 1
            assert client.get("/v1.0/state/statestore/after").json() == 2
            assert client.get("/v1.0/healthz/outbound").status_code == 204
        with topology.node(topology.replica_port) as promoted:
            assert promoted.hget(f"{sidecar.app_id}||after", "data") == b"2"
        assert REDIS_PASSWORD not in sidecar.log() and SENTINEL_PASSWORD not in sidecar.log()
    finally:
        assert sidecar.stop() == 0, sidecar.log()


def test_subscriptions_follow_the_master_through_a_failover(tmp_path: Path, topology: Topology) -> None:
    resources = {"pubsub.yaml": component("pubsub", "pubsub.redis", topology.metadata(readTimeout="500ms"))}
    app = SubscriberApp([subscription("orders", "/orders")]).start()
    try:
        with running(tmp_path, app, resources) as sidecar, sidecar.client() as client:
            assert client.post("/v1.0/publish/pubsub/orders", json={"n": 1}).status_code == 204
            app.wait_for(1, "/orders")
            topology.kill_master_and_wait_for_promotion()
            deadline = time.monotonic() + 15
            while client.post("/v1.0/publish/pubsub/orders", json={"n": 2}).status_code != 204:
                assert time.monotonic() < deadline, sidecar.log()
                time.sleep(0.1)
            delivered = app.wait_for(1, "/orders", where=lambda d: d.event["data"] == {"n": 2})
            assert len(delivered) == 1
    finally:
        app.stop()


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"sentinelMasterName": ""}, "metadata field 'sentinelMasterName': is required with failover: true"),
        ({"enableTLS": "true"}, "metadata field 'enableTLS': TLS with Redis Sentinel is not supported yet"),
        ({"failover": "false"}, "metadata field 'redisHost': a list of addresses needs failover: true"),
    ],
)
def test_sentinel_settings_are_checked_at_start_up(
    tmp_path: Path, change: dict[str, str], problem: str
) -> None:
    metadata = {
        "redisHost": f"127.0.0.1:{free_port()},127.0.0.1",
        "failover": "true",
        "sentinelMasterName": MASTER_NAME,
        **change,
    }
    (tmp_path / "resources").mkdir()
    (tmp_path / "resources" / "state.yaml").write_text(component("statestore", "state.redis", metadata))
    result = run_sidecar_to_exit(
        tmp_path, ["--app-id", "a", "--metrics-port", "0", "--resources-path", str(tmp_path / "resources")]
    )
    assert result.returncode == 1
    assert problem in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"sentinelPassword": "not-the-password"}, "AuthenticationError"),
        ({"sentinelMasterName": "no-such-master"}, "No master found for 'no-such-master'"),
        ({"redisHost": "127.0.0.1:{free}"}, "Connect"),
    ],
)
def test_sentinel_trouble_stops_start_up_with_one_line(
    tmp_path: Path, topology: Topology, change: dict[str, str], problem: str
) -> None:
    free = free_port()
    metadata = topology.metadata(redisMaxRetries="0", **{k: v.format(free=free) for k, v in change.items()})
    (tmp_path / "resources").mkdir()
    (tmp_path / "resources" / "state.yaml").write_text(component("statestore", "state.redis", metadata))
    result = run_sidecar_to_exit(
        tmp_path, ["--app-id", "a", "--metrics-port", "0", "--resources-path", str(tmp_path / "resources")]
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("pillion:")]
    assert len(lines) == 1, result.stderr
    sentinel = metadata["redisHost"]
    assert f"master '{metadata['sentinelMasterName']}' of sentinels {sentinel}" in lines[0]
    assert problem in lines[0]
    assert len(lines[0]) < 500, "the error names the sentinels, not their clients' settings"
    assert "not-the-password" not in result.stderr

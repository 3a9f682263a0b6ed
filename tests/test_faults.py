"""Faults with real processes: a backend that goes away and comes back (issue 7)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.state_support import component
from tests.support import free_port, start_sidecar


class PrivateRedis:
    """A redis-server this test may stop and start again on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        server = shutil.which("redis-server")
        assert server, "redis-server is needed: apt-get install redis-server"
        self.proc = subprocess.Popen(
            [
                server,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def test_redis_away_and_back(tmp_path: Path, private_redis: PrivateRedis) -> None:
    yaml = component(
        "statestore", "state.redis", {"redisHost": f"127.0.0.1:{private_redis.port}", "dialTimeout": "300ms"}
    )
    sidecar = start_sidecar(tmp_path, resources={"s.yaml": yaml})
    try:
        with sidecar.client() as api:
            assert api.post("/v1.0/state/statestore", json=[{"key": "k", "value": 1}]).status_code == 204
            private_redis.stop()
            during = [api.get("/v1.0/state/statestore/k") for _ in range(5)]
            assert {r.status_code for r in during} == {500}
            assert {r.json()["errorCode"] for r in during} == {"ERR_STATE_GET"}
            saved = api.post("/v1.0/state/statestore", json=[{"key": "k", "value": 2}])
            assert (saved.status_code, saved.json()["errorCode"]) == (500, "ERR_STATE_SAVE")
            outbound = api.get("/v1.0/healthz/outbound")
            assert outbound.status_code == 500
            assert "statestore" in outbound.json()["message"]
            private_redis.start()  # empty again: it keeps nothing on disk
            deadline = time.monotonic() + 10
            while api.post("/v1.0/state/statestore", json=[{"key": "k", "value": 3}]).status_code != 204:
                assert time.monotonic() < deadline, "the sidecar did not recover on its own"
                time.sleep(0.1)
            assert api.get("/v1.0/state/statestore/k").content == b"3"
            assert api.get("/v1.0/healthz/outbound").status_code == 204
        assert sidecar.proc.poll() is None
    finally:
        sidecar.stop()

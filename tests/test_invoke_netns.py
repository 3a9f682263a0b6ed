"""Two hosts made of network namespaces joined by a veth pair: sidecars on each invoke each other
over mTLS, finding one another through Redis name resolution on one of the hosts."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime.invocation.mtls import create_ca
from tests.invoke_support import APP
from tests.support import ROOT

pytestmark = pytest.mark.timeout(180)
HOW_TO = "needs root, iproute2 (`ip netns`) and redis-server: run as root on Linux"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class Host:
    netns: str
    address: str

    def popen(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})},
            )

    def get(self, url: str) -> tuple[int, str]:
        """An HTTP GET made inside this host."""
        script = (
            "import httpx, json, sys; r = httpx.get(sys.argv[1], timeout=30);"
            "print(json.dumps([r.status_code, r.text]))"
        )
        result = subprocess.run(
            ["ip", "netns", "exec", self.netns, sys.executable, "-c", script, url],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        status, text = json.loads(result.stdout)
        return int(status), str(text)


@pytest.fixture
def hosts() -> Iterator[tuple[Host, Host]]:
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("redis-server"):
        pytest.fail(HOW_TO)
    tag = secrets.token_hex(3)
    subnet = f"10.{int(tag[:2], 16) % 200 + 20}.{int(tag[2:4], 16)}"
    a, b = Host(f"pl-a-{tag}", f"{subnet}.1"), Host(f"pl-b-{tag}", f"{subnet}.2")
    _ip("netns", "add", a.netns)
    _ip("netns", "add", b.netns)
    try:
        _ip(
            "link",
            "add",
            f"va{tag}",
            "netns",
            a.netns,
            "type",
            "veth",
            "peer",
            "name",
            f"vb{tag}",
            "netns",
            b.netns,
        )
        for host, link in ((a, f"va{tag}"), (b, f"vb{tag}")):
            _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", link)
            _ip("-n", host.netns, "link", "set", link, "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")
        yield a, b
    finally:
        _ip("netns", "del", a.netns)
        _ip("netns", "del", b.netns)


def _wait_for_line(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text(errors="replace")
        assert time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.1)


def test_sidecars_on_two_hosts_invoke_each_other_over_mtls(hosts: tuple[Host, Host], tmp_path: Path) -> None:
    a, b = hosts
    ca = tmp_path / "ca"
    create_ca(ca)
    foreign = tmp_path / "foreign"
    create_ca(foreign)
    password = secrets.token_hex(8)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata: {{name: hosts}}
spec:
  nameResolution:
    component: redis
    configuration: {{redisHost: "{a.address}:6390", redisPassword: "{password}", updateInterval: 3s}}
"""
    )
    procs: list[subprocess.Popen[bytes]] = []

    def start(host: Host, args: list[str], name: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / f"{name}.log"
        proc = host.popen(args, log, {"PILLION_HOME": str(tmp_path / name)})
        procs.append(proc)
        return proc, log

    try:
        redis_args = ["redis-server", "--bind", a.address, "--port", "6390", "--save", ""]
        redis, redis_log = start(a, [*redis_args, "--appendonly", "no", "--requirepass", password], "redis")
        _wait_for_line(redis_log, "Ready to accept connections", redis)
        sidecars = {}
        # (host, app id, CA, API port, app port): the stranger's certificate is from another CA.
        layout = (
            (a, "host-a", ca, 3500, 7070),
            (b, "host-b", ca, 3500, 7070),
            (b, "host-stranger", foreign, 3501, 7071),
        )
        for host, app_id, ca_dir, api_port, app_port in layout:
            start(host, [sys.executable, "-c", APP, str(app_port), app_id], f"{app_id}-app")
            args = ["--app-id", app_id, "--dapr-http-port", str(api_port), "--app-port", str(app_port)]
            args += ["--metrics-port", "0", "--config", str(config), "--ca-dir", str(ca_dir)]
            args += [
                "--dapr-internal-grpc-listen-address",
                host.address,
                "--data-dir",
                str(tmp_path / app_id),
            ]
            sidecars[app_id] = start(host, [sys.executable, "-m", "runtime", "serve", *args], app_id)
        for app_id, (proc, log) in sidecars.items():
            _wait_for_line(log, "Started server process", proc)
            assert f"internal port {a.address if app_id == 'host-a' else b.address}:" in log.read_text()

        status, text = b.get("http://127.0.0.1:3500/v1.0/invoke/host-a/method/echo/from-b")
        assert status == 200, text
        seen = json.loads(text)
        headers = {k.lower(): v for k, v in seen["headers"]}
        assert headers["dapr-caller-app-id"] == "host-b"
        assert headers["x-forwarded-for"] == b.address  # it came from the other host

        status, text = a.get("http://127.0.0.1:3500/v1.0/invoke/host-b/method/echo/from-a")
        assert status == 200, text
        assert json.loads(text)["path"] == "/echo/from-a"

        # A sidecar whose certificate comes from another CA reaches the host but is refused.
        status, text = b.get("http://127.0.0.1:3501/v1.0/invoke/host-a/method/echo/x")
        assert status == 500
        assert "Unavailable" in json.loads(text)["message"]
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

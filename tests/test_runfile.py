"""``pillion run -f``: the Dapr multi-app run file, and the dapr CLI flags ``pillion run`` accepts."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support import ROOT, free_port


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "runtime", "run", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
    )


def _wait_for(url: str, timeout: float, proc: subprocess.Popen[str], any_status: bool = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            if any_status:
                return
            time.sleep(0.2)
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"{url} did not answer:\n{proc.communicate()[0]}")


def _call(method: str, url: str, body: object | None = None) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.mark.timeout(240)
def test_the_node_and_go_samples_run_from_the_run_file(tmp_path: Path) -> None:
    """checkout (Node) asks fulfilment (Go) for a quote by service invocation."""
    if not (shutil.which("node") and shutil.which("go")):
        pytest.fail("this test needs Node.js 18+ and Go 1.19+ (Debian: apt-get install nodejs golang)")
    # A copy, so the run's SQLite files and logs stay out of the repository; clients/ keeps the
    # samples' relative imports working.
    shutil.copytree(
        ROOT / "samples", tmp_path / "samples", ignore=shutil.ignore_patterns(".pillion-sample", ".dapr")
    )
    shutil.copytree(ROOT / "clients", tmp_path / "clients", ignore=shutil.ignore_patterns("node_modules"))
    run_file = tmp_path / "samples" / "dapr.yaml"
    checkout_port, fulfilment_port = free_port(), free_port()
    text = run_file.read_text().replace("7101", str(checkout_port)).replace("7102", str(fulfilment_port))
    run_file.write_text(text)
    proc = _start(["-f", str(tmp_path / "samples")], tmp_path)
    try:
        _wait_for(f"http://127.0.0.1:{checkout_port}/orders/none", 120, proc)
        # The apps start side by side: fulfilment (and so its registered sidecar) may come up later.
        _wait_for(f"http://127.0.0.1:{fulfilment_port}/", 120, proc)
        status, order = _call(
            "POST", f"http://127.0.0.1:{checkout_port}/orders", {"id": "rf-1", "item": "pen", "qty": 3}
        )
        assert status == 201, order
        assert isinstance(order, dict)
        assert order["quote"] == {
            "carrier": "ground",
            "currency": "EUR",
            "item": "pen",
            "qty": 3,
            "totalCents": 1097,
        }
        deadline = time.monotonic() + 20
        while True:
            status, seen = _call("GET", f"http://127.0.0.1:{checkout_port}/orders/rf-1")
            assert isinstance(seen, dict)
            if seen.get("shipment"):
                break
            assert time.monotonic() < deadline, seen
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert "== APP - fulfilment == quote for checkout: 3 x pen by ground" in output
    assert "== APP - checkout == order rf-1 accepted: 3 x pen, quoted 10.97 EUR" in output
    assert 'Started pillion with app id "fulfilment"' in output
    assert "app 'checkout' stopped" in output and "app 'fulfilment' stopped" in output
    logs = list((tmp_path / "samples" / ".dapr" / "logs").glob("checkout_daprd_*.log"))
    assert logs and "serving app 'checkout'" in logs[0].read_text()


def test_a_failing_app_is_reported_and_the_others_keep_running(tmp_path: Path) -> None:
    for name in ("ok", "bad"):
        (tmp_path / name).mkdir()
    (tmp_path / "dapr.yaml").write_text(
        """
version: 1
common:
  env: {GREETING: hello}
apps:
  - appDirPath: ./ok
    command: ["sh", "-c", "echo $GREETING from $APP_ID; exec sleep 60"]
    appLogDestination: console
  - appDirPath: ./bad
    appID: broken
    command: ["sh", "-c", "echo about to fail; exit 3"]
"""
    )
    proc = _start(["-f", str(tmp_path / "dapr.yaml")], tmp_path)
    try:
        deadline = time.monotonic() + 30
        output = ""
        assert proc.stdout is not None
        while "app 'broken' exited with code 3" not in output:
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, output
            output += line
        assert proc.poll() is None  # the other app still runs
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    output += rest
    assert proc.returncode == 3
    assert "== APP - ok == hello from ok" in output
    assert "== APP - broken == about to fail" in output
    assert "app 'ok' stopped" in output
    assert list((tmp_path / "bad" / ".dapr" / "logs").glob("broken_app_*.log"))


def test_run_file_problems_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "dapr.yaml").write_text("version: 1\napps:\n  - appID: x\n")
    missing = _start(["-f", str(tmp_path / "nothing.yaml")], tmp_path).communicate(timeout=30)[0]
    no_dir = _start(["-f", str(tmp_path)], tmp_path).communicate(timeout=30)[0]
    assert "run file" in missing and "not found" in missing
    assert "apps[0]: appDirPath is required" in no_dir


def test_dapr_cli_flags_are_accepted(tmp_path: Path) -> None:
    app_port = free_port()
    script = (
        "import os; from http.server import HTTPServer, BaseHTTPRequestHandler;"
        "print('env', os.environ['APP_ID'], os.environ['APP_PORT'], os.environ['APP_PROTOCOL'],"
        " os.environ['DAPR_GRPC_PORT'], flush=True);"
        f"HTTPServer(('127.0.0.1', {app_port}), BaseHTTPRequestHandler).serve_forever()"
    )
    http_port = free_port()
    grpc_port = free_port()
    flags = ["-a", "flags", "-p", str(app_port), "-P", "http", "-H", str(http_port), "-G", str(grpc_port)]
    flags += ["-M", str(free_port()), "--enable-api-logging", "--placement-host-address", "localhost:50005"]
    flags += ["--app-max-concurrency", "5", "--enable-profiling"]
    proc = _start([*flags, "--", sys.executable, "-c", script], tmp_path)
    try:
        _wait_for(f"http://127.0.0.1:{http_port}/v1.0/healthz", 30, proc, any_status=False)
        _call("GET", f"http://127.0.0.1:{http_port}/v1.0/metadata")
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert f"env flags {app_port} http {grpc_port}" in output
    assert "HTTP API Called: GET /v1.0/metadata" in output
    # -G is a real flag now (the gRPC API's port); these still have no effect.
    for flag in (
        "--placement-host-address",
        "--app-max-concurrency",
        "--enable-profiling",
    ):
        assert re.search(rf"{flag} is accepted but has no effect: ", output), flag

"""``pillion status``: running sidecars found through their run-dir files, with their metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil

from runtime.cli.status import Registration, register
from tests.support import start_sidecar

APP = textwrap.dedent(
    """
    import os, time
    held = b"a" * (30 * 2**20)
    print("metrics-port", os.environ["DAPR_METRICS_PORT"], flush=True)
    time.sleep(120)
    """
)


def status(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime", "status", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={**os.environ, "PILLION_RUN_DIR": str(run_dir)},
    )


def rows(run_dir: Path) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(status(run_dir, "--json").stdout)
    return found


def test_status_lists_a_pillion_run_app_with_its_resources(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    app = tmp_path / "app.py"
    app.write_text(APP)
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "runtime", "run", "--app-id", "shown", "--data-dir", str(tmp_path / "d")),
            *("--", sys.executable, str(app)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PILLION_RUN_DIR": str(run_dir)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "metrics-port" in line, line
        app_metrics_port = int(line.split()[-1])
        deadline = time.monotonic() + 20
        while True:
            found = rows(run_dir)
            if found and (found[0]["app_rss_bytes"] or 0) > 30 * 2**20:
                break
            assert time.monotonic() < deadline, found
            time.sleep(0.2)
        [row] = found
        assert row["app_id"] == "shown" and row["pid"] == proc.pid
        # Picked free when omitted, and the app was told which.
        assert row["metrics_port"] == app_metrics_port != 9090
        assert row["sidecar_rss_bytes"] > 0 and row["sidecar_cpu_seconds"] > 0
        assert row["app_cpu_seconds"] > 0
        table = status(run_dir).stdout.splitlines()
        assert table[0].split()[:3] == ["APP", "ID", "PID"]
        assert table[1].split()[:4] == ["shown", str(proc.pid), str(row["http_port"]), str(app_metrics_port)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert rows(run_dir) == []
    assert list(run_dir.iterdir()) == []


def test_a_sidecar_without_metrics_is_listed_without_them(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    sidecar = start_sidecar(
        tmp_path, app_id="quiet", extra_args=["--enable-metrics=false"], env={"PILLION_RUN_DIR": str(run_dir)}
    )
    try:
        [row] = rows(run_dir)
        assert row["app_id"] == "quiet" and row["http_port"] == sidecar.port
        assert row["metrics_port"] is None and row["requests"] is None
        line = status(run_dir).stdout.splitlines()[1].split()
        assert line[:4] == ["quiet", str(sidecar.proc.pid), str(sidecar.port), "-"]
    finally:
        sidecar.stop()


def test_files_left_by_dead_sidecars_are_removed(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    register(Registration("dead", gone.pid, "127.0.0.1", 1, 2, time.time(), "0"), run_dir)
    # This process is alive, but it started after the "sidecar" that registered with its pid.
    earlier = psutil.Process().create_time() - 60
    reused = Registration("reused", os.getpid(), "127.0.0.1", 1, 2, earlier, "0")
    (run_dir / f"{os.getpid()}.json").write_text(json.dumps(reused.__dict__))
    (run_dir / "garbage.json").write_text("{not json")
    result = status(run_dir)
    assert result.stdout == ""
    assert "no sidecars running" in result.stderr
    assert list(run_dir.iterdir()) == []

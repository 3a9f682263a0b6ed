"""Start-up, memory and the resource monitor's cost (issues 2 and 5).

* ``lifecycle.serve``: ``pillion serve`` with the embedded defaults, from spawn to
  ``/v1.0/healthz`` answering 204, and its resident memory after 2 s idle (metrics on, as by
  default); next to the no-op server of the same stack measured the same way.
* ``lifecycle.run``: ``pillion run`` with the embedded defaults and a fresh data folder, from spawn
  to the app's first successful state call (bench/cold_app.py), next to the same app started
  alone reaching its first line; the sidecar's resident memory, idle with metrics on; and the CPU
  time ``N`` scrapes of ``/metrics`` cost the sidecar, as a share of a core at a 15 s interval.
"""

from __future__ import annotations

import http.client
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

from bench.common import ROOT, BenchError, Row, SectionResult, Settings
from bench.services import Services
from tests.support import free_port

GOAL_SERVE_START_S = 0.7
GOAL_RUN_START_S = 1.0
GOAL_RSS_MB = 60.0
GOAL_MONITOR_CORE_PCT = 1.0
SCRAPE_INTERVAL_S = 15.0
IDLE_S = 2.0
COLD_APP = str(ROOT / "bench" / "cold_app.py")


def answers(port: int, path: str, status: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == status
    except OSError:
        return False
    finally:
        connection.close()


@contextmanager
def spawned(args: list[str], workdir: Path, port: int, path: str, status: int) -> Iterator[tuple[float, int]]:
    """Start ``args``; yield (seconds from spawn until ``path`` answers ``status``, pid); stop it."""
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / "output.log").open("wb") as log:
        began = time.perf_counter()
        proc = subprocess.Popen(
            args,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            # `python -m bench.…` from the work folder.
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    try:
        deadline = began + 20
        while not answers(port, path, status):
            if proc.poll() is not None or time.perf_counter() > deadline:
                raise BenchError(f"{' '.join(args)} did not serve:\n{(workdir / 'output.log').read_text()}")
            time.sleep(0.002)
        yield time.perf_counter() - began, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def start_and_idle(args: list[str], workdir: Path, port: int, path: str, status: int) -> tuple[float, float]:
    with spawned(args, workdir, port, path, status) as (seconds, pid):
        time.sleep(IDLE_S)
        return seconds, rss_mb(pid)


def noop_server(workdir: Path) -> tuple[list[str], Path, int, str, int]:
    """``spawned``'s arguments for the no-op server of the same stack."""
    port = free_port()
    return [sys.executable, "-m", "bench.noop_server", str(port)], workdir, port, "/v1.0/state/s/k", 200


def serve(settings: Settings, services: Services) -> SectionResult:
    ours: list[tuple[float, float]] = []
    noop: list[tuple[float, float]] = []
    for i in range(settings.starts):
        port = free_port()
        args = [
            sys.executable,
            "-m",
            "runtime",
            "serve",
            "--app-id",
            "benchstart",
            "--dapr-http-port",
            str(port),
        ]
        args += [
            "--data-dir",
            str(settings.workdir / f"serve-{i}" / "data"),
            "--metrics-port",
            str(free_port()),
            # The gRPC API on, as by default (on a port of its own: 50001 may be taken here).
            "--dapr-grpc-port",
            str(free_port()),
        ]
        ours.append(start_and_idle(args, settings.workdir / f"serve-{i}", port, "/v1.0/healthz", 204))
        noop.append(start_and_idle(*noop_server(settings.workdir / f"noop-{i}")))
    start, rss = statistics.median(s for s, _ in ours), statistics.median(r for _, r in ours)
    noop_start, noop_rss = statistics.median(s for s, _ in noop), statistics.median(r for _, r in noop)
    return SectionResult(
        rows=[
            Row(
                f"pillion serve: spawn to serving (median of {settings.starts})",
                f"{noop_start:.2f} s (no-op server)",
                f"{start:.2f} s",
                f"{start - noop_start:+.2f} s",
                f"<= {GOAL_SERVE_START_S:g} s",
                start <= GOAL_SERVE_START_S,
            ),
            Row(
                "pillion serve: idle RSS, metrics on",
                f"{noop_rss:.1f} MB (no-op server)",
                f"{rss:.1f} MB",
                f"{rss - noop_rss:+.1f} MB",
                f"<= {GOAL_RSS_MB:g} MB",
                rss <= GOAL_RSS_MB,
            ),
        ],
        data={
            "pillion": {"start_s": [s for s, _ in ours], "rss_mb": [r for _, r in ours]},
            "noop": {"start_s": [s for s, _ in noop], "rss_mb": [r for _, r in noop]},
        },
    )


# --- pillion run -------------------------------------------------------------------------------


def run_command(workdir: Path, mode: str, metrics_port: int) -> list[str]:
    return [
        *(sys.executable, "-m", "runtime", "run", "--app-id", "benchcold", "--log-level", "warning"),
        *("--data-dir", str(workdir / "data"), "--metrics-port", str(metrics_port)),
        *("--", sys.executable, COLD_APP, mode),
    ]


def app_times(line: bytes, began_ns: int) -> tuple[float, float]:
    """(seconds to the app's first line, seconds to its first successful state call)."""
    started, ok = (int(part) for part in line.decode().split()[-2:])
    return (started - began_ns) / 1e9, (ok - began_ns) / 1e9


@contextmanager
def pillion_run(
    workdir: Path, mode: str, metrics_port: int
) -> Iterator[tuple[subprocess.Popen[bytes], bytes, int]]:
    """``pillion run`` of the cold app: yield the process, the app's line and the spawn time."""
    workdir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic_ns()
    proc = subprocess.Popen(
        run_command(workdir, mode, metrics_port), cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if b"== APP ==" not in line:
            proc.kill()
            _, err = proc.communicate()
            raise BenchError(f"pillion run did not start the app: {line!r}\n{err.decode(errors='replace')}")
        yield proc, line, began
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def scrape_cost(pid: int, metrics_port: int, scrapes: int, idle_s: float) -> dict[str, float]:
    """CPU seconds one /metrics scrape costs the sidecar, less what it spends idle meanwhile."""
    before = cpu_seconds(pid)
    time.sleep(idle_s)
    idle_rate = (cpu_seconds(pid) - before) / idle_s
    with httpx.Client(base_url=f"http://127.0.0.1:{metrics_port}") as client:
        client.get("/metrics").raise_for_status()
        before, began = cpu_seconds(pid), time.perf_counter()
        for _ in range(scrapes):
            client.get("/metrics").raise_for_status()
        elapsed, spent = time.perf_counter() - began, cpu_seconds(pid) - before
    per_scrape = max(0.0, spent - idle_rate * elapsed) / scrapes
    return {
        "idle_core_pct": idle_rate * 100,
        "cpu_ms_per_scrape": per_scrape * 1000,
        "core_pct_at_15s": per_scrape / SCRAPE_INTERVAL_S * 100,
        "scrapes": scrapes,
    }


def run(settings: Settings, services: Services) -> SectionResult:
    cold: list[tuple[float, float]] = []
    alone: list[float] = []
    for i in range(settings.starts):
        with pillion_run(settings.workdir / f"run-{i}", "once", free_port()) as (proc, line, began):
            cold.append(app_times(line, began))
            if proc.wait(15) != 0:
                raise BenchError(f"pillion run exited with {proc.returncode}")
        began = time.monotonic_ns()
        out = subprocess.run([sys.executable, COLD_APP, "start"], capture_output=True, check=True).stdout
        alone.append(app_times(out, began)[0])
    metrics_port = free_port()
    with pillion_run(settings.workdir / "run-idle", "idle", metrics_port) as (proc, _, _):
        time.sleep(IDLE_S)
        rss = rss_mb(proc.pid)
        monitor = scrape_cost(
            proc.pid, metrics_port, settings.scrapes, idle_s=max(1.0, settings.load_seconds / 2)
        )
    _, noop_rss = start_and_idle(*noop_server(settings.workdir / "run-noop"))
    first_call = statistics.median(ok for _, ok in cold)
    app_alone = statistics.median(alone)
    share = monitor["core_pct_at_15s"]
    return SectionResult(
        rows=[
            Row(
                "pillion run, embedded defaults: spawn to the app's first state call OK "
                f"(median of {settings.starts})",
                f"{app_alone:.2f} s (the app alone, to its first line)",
                f"{first_call:.2f} s",
                f"{first_call - app_alone:+.2f} s",
                f"<= {GOAL_RUN_START_S:g} s",
                first_call <= GOAL_RUN_START_S,
            ),
            Row(
                "pillion run: sidecar idle RSS, metrics on",
                f"{noop_rss:.1f} MB (no-op server)",
                f"{rss:.1f} MB",
                f"{rss - noop_rss:+.1f} MB",
                f"<= {GOAL_RSS_MB:g} MB",
                rss <= GOAL_RSS_MB,
            ),
            Row(
                f"resource monitor: sidecar CPU per /metrics scrape ({settings.scrapes} scrapes), "
                f"as a share of a core at a {SCRAPE_INTERVAL_S:g} s interval",
                f"{monitor['idle_core_pct']:.3f}% (sidecar idle, no scrapes)",
                f"{share:.3f}% ({monitor['cpu_ms_per_scrape']:.2f} ms per scrape)",
                "",
                f"< {GOAL_MONITOR_CORE_PCT:g}% of a core",
                share < GOAL_MONITOR_CORE_PCT,
            ),
        ],
        data={
            "cold_start": [{"app_started_s": s, "first_state_call_s": ok} for s, ok in cold],
            "app_alone_s": alone,
            "idle_rss_mb": rss,
            "noop_idle_rss_mb": noop_rss,
            "monitor": monitor,
        },
    )

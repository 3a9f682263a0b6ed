"""Service invocation benchmark (issue 15).

* ``invoke.latency``: POST of a 1 KB JSON body to the app, at 1,000 requests/s over 16
  connections: through two sidecars (caller's sidecar -> mTLS -> target's sidecar -> app) against
  the app called directly, interleaved. The app is bench.noop_server (reads the body, answers 204),
  so the difference is what the two sidecars add. Also the CPU time each sidecar spends per
  invocation (from /proc, over a run of its own) and the throughput at 32 connections (wrk, GET of a
  7-byte answer) through the sidecars against the app directly.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import psutil

from bench.common import (
    Helper,
    LatencyChart,
    Row,
    SectionResult,
    Settings,
    fixed_rate,
    interleaved,
    latency_rows,
    ratio_row,
    wrk_throughput,
)
from bench.services import Services
from tests.support import SidecarProcess, start_sidecar

# daprd 1.17's HTTP invocation figures with mTLS on, as the issue gives them.
GOAL_ADDED_MS = {"p50": 1.06, "p90": 1.48, "p99": 2.90}
GOAL_THROUGHPUT_RATIO = 0.5
BODY = json.dumps({"data": "x" * 1011}).encode()  # 1,024 bytes
POST_PATH = "/v1.0/publish/bench/orders"
GET_PATH = "/v1.0/state/bench/k"


def _cpu(process: SidecarProcess) -> float:
    times = psutil.Process(process.proc.pid).cpu_times()
    return float(times.user + times.system)


def latency(settings: Settings, services: Services) -> SectionResult:
    workdir = settings.workdir / "invoke"
    # Their own CA and name-resolution file, not the user's.
    env = {"PILLION_HOME": str(workdir / "home")}
    quiet = ["--log-level", "warning"]
    with Helper("noop_server") as app:
        target = start_sidecar(
            workdir / "target", "bench-target", None, [*quiet, "--app-port", str(app.port)], env
        )
        caller = start_sidecar(workdir / "caller", "bench-caller", None, quiet, env)
        try:
            through = f"{caller.url}/v1.0/invoke/bench-target/method"
            found = interleaved(
                {
                    "app directly": lambda s: fixed_rate(settings, app.url + POST_PATH, s, BODY),
                    "through two sidecars (mTLS)": lambda s: fixed_rate(
                        settings, through + POST_PATH, s, BODY
                    ),
                },
                settings.latency_seconds,
            )
            before = {p.app_id: _cpu(p) for p in (caller, target)}
            load = fixed_rate(settings, through + POST_PATH, settings.load_seconds, BODY)
            sent = load.requests_per_s * settings.load_seconds
            cpu_ms = {p.app_id: (_cpu(p) - before[p.app_id]) / sent * 1000 for p in (caller, target)}
            direct_rps = wrk_throughput(app.url + GET_PATH, settings.load_seconds)
            through_rps = wrk_throughput(through + GET_PATH, settings.load_seconds)
        finally:
            caller.stop()
            target.stop()
    base, ours = found["app directly"], found["through two sidecars (mTLS)"]
    rows = latency_rows(
        "Invocation POST 1 KB, 1,000 req/s, 16 conns, via 2 sidecars vs direct:",
        "direct",
        base,
        ours,
        GOAL_ADDED_MS,
    )
    rows += [
        Row(f"Invocation: CPU per call, {name} sidecar", "", f"{value:.3f} ms", "", "", None)
        for name, value in (("caller's", cpu_ms["bench-caller"]), ("target's", cpu_ms["bench-target"]))
    ]
    rows.append(
        ratio_row(
            "Invocation throughput, 32 conns, via 2 sidecars vs direct",
            "direct",
            direct_rps,
            through_rps,
            GOAL_THROUGHPUT_RATIO,
        )
    )
    return SectionResult(
        rows=rows,
        charts=[
            LatencyChart("invoke-latency", "Invocation through two sidecars, 1,000 req/s, 16 conns", found)
        ],
        data={
            "seconds": settings.latency_seconds,
            "series": {k: asdict(v) for k, v in found.items()},
            "cpu_ms_per_call": cpu_ms,
            "throughput": {"direct": direct_rps, "through": through_rps},
            "cpus": os.cpu_count(),
        },
    )

"""State API benchmarks (issues 2 and 8).

* ``state.latency``: GET latency on ``state.in-memory`` against a no-op endpoint of the same server
  stack (bench.noop_server), at 1,000 requests/s over 16 connections (hey), interleaved.
* ``state.redis``: GET throughput at 32 connections (wrk) on ``state.redis`` against redis-py
  running the store's own read script at 32-way concurrency (bench.redis_direct).
* ``state.postgresql``: the same on ``state.postgresql`` against asyncpg running the store's own
  SELECT through an identical pool (bench.postgres_direct).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import asdict
from pathlib import Path

import httpx
import redis as redis_client

from bench.common import (
    Helper,
    LatencyChart,
    SectionResult,
    Settings,
    fixed_rate,
    interleaved,
    latency_rows,
    ratio_row,
    run_module,
    wrk_throughput,
)
from bench.services import Services
from tests.state_support import component, redis_metadata
from tests.support import SidecarProcess, start_sidecar

APP_ID = "benchapp"
GOAL_ADDED_MS = {"p50": 0.28, "p90": 0.71, "p99": 0.98}
GOAL_THROUGHPUT_RATIO = 0.7
CONNECTIONS = 32


def sidecar(workdir: Path, resources: dict[str, str]) -> SidecarProcess:
    return start_sidecar(workdir, app_id=APP_ID, resources=resources, extra_args=["--log-level", "warning"])


def save(url: str, key: str) -> None:
    httpx.post(f"{url}/v1.0/state/statestore", json=[{"key": key, "value": {"n": 1}}]).raise_for_status()


def latency(settings: Settings, services: Services) -> SectionResult:
    ours = sidecar(
        settings.workdir / "state-latency", {"s.yaml": component("statestore", "state.in-memory", {})}
    )
    try:
        with Helper("noop_server") as noop:
            save(ours.url, "k")
            found = interleaved(
                {
                    "no-op endpoint": lambda s: fixed_rate(
                        settings, f"{noop.url}/v1.0/state/statestore/k", s
                    ),
                    "Pillion, state.in-memory": lambda s: fixed_rate(
                        settings, f"{ours.url}/v1.0/state/statestore/k", s
                    ),
                },
                settings.latency_seconds,
            )
    finally:
        ours.stop()
    base, pillion = found["no-op endpoint"], found["Pillion, state.in-memory"]
    return SectionResult(
        rows=latency_rows(
            "GET latency, 1,000 req/s, 16 conns, in-memory vs no-op:", "no-op", base, pillion, GOAL_ADDED_MS
        ),
        charts=[LatencyChart("state-get-latency", "State GET at 1,000 req/s, 16 connections", found)],
        data={"seconds": settings.latency_seconds, "series": {k: asdict(v) for k, v in found.items()}},
    )


def throughput_pair(
    settings: Settings, label: str, resources: dict[str, str], direct: list[str], key: str
) -> tuple[float, float]:
    """wrk on a Pillion GET, then the direct program (its last arguments: key, concurrency, seconds)."""
    seconds = settings.load_seconds
    ours = sidecar(settings.workdir / f"state-{label}", resources)
    try:
        save(ours.url, key)
        url = f"{ours.url}/v1.0/state/statestore/{key}"
        wrk_throughput(url, min(2.0, seconds), CONNECTIONS)
        through_pillion = wrk_throughput(url, seconds, CONNECTIONS)
        # The stored key is "<app id>||<key>" on every store.
        baseline = float(run_module(*direct, f"{APP_ID}||{key}", str(CONNECTIONS), f"{seconds:g}"))
    finally:
        ours.stop()
    return through_pillion, baseline


def redis(settings: Settings, services: Services) -> SectionResult:
    url = services.redis_url()
    resources = {"s.yaml": component("statestore", "state.redis", redis_metadata(url))}
    key = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        pillion, direct = throughput_pair(settings, "redis", resources, ["redis_direct", url], key)
    finally:
        with redis_client.Redis.from_url(url) as client:
            client.delete(f"{APP_ID}||{key}")
    return SectionResult(
        rows=[
            ratio_row(
                "GET throughput, 32 conns, state.redis vs redis-py (same script, 32-way)",
                "redis-py",
                direct,
                pillion,
                GOAL_THROUGHPUT_RATIO,
            )
        ],
        data={"pillion_rps": pillion, "direct_redis_py_ops": direct, "seconds": settings.load_seconds},
    )


def postgresql(settings: Settings, services: Services) -> SectionResult:
    url = services.postgres_url()
    resources = {"s.yaml": component("statestore", "state.postgresql", {"connectionString": url})}
    key = f"bench-{uuid.uuid4().hex[:8]}"
    pillion, direct = throughput_pair(settings, "postgresql", resources, ["postgres_direct", url], key)
    return SectionResult(
        rows=[
            ratio_row(
                "GET throughput, 32 conns, state.postgresql vs asyncpg (same SELECT and pool, 32-way)",
                "asyncpg",
                direct,
                pillion,
                GOAL_THROUGHPUT_RATIO,
            )
        ],
        data={
            "pillion_rps": pillion,
            "direct_asyncpg_ops": direct,
            "pool_size": max(4, os.cpu_count() or 1),
            "seconds": settings.load_seconds,
        },
    )

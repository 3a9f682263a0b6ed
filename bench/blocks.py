"""Benchmarks of issue 16: bindings, the distributed lock, the configuration API.

* ``blocks.binding_http``: an output binding ``bindings.http`` GET through the sidecar at 1,000
  requests/s over 16 connections (bench.loadgen), interleaved with the same GET sent straight to
  the target (bench.noop_server): the added p50/p90/p99.
* ``blocks.lock_redis``: lock/unlock pairs per second on ``lock.redis`` at 32-way concurrency,
  against redis-py running the same ``SET NX EX`` and Lua unlock at the same concurrency
  (bench.lock_direct).
* ``blocks.configuration``: a value written to Redis every 20 ms; how long until the subscribed app
  (bench.config_app) has it, through ``configuration.redis`` (keyspace notification, re-read, POST).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict

import httpx
import redis as redis_client

from bench.common import (
    Helper,
    Latency,
    LatencyChart,
    Row,
    SectionResult,
    Settings,
    fixed_rate,
    interleaved,
    latency_rows,
    ms,
    ratio_row,
    run_module,
)
from bench.services import Services, private_redis
from tests.state_support import component, redis_metadata
from tests.support import start_sidecar

GOAL_LOCK_RATIO = 0.5
GOAL_CONFIG_P50_MS = 50.0
CONCURRENCY = 32
QUIET = ["--log-level", "warning"]


def binding_http(settings: Settings, services: Services) -> SectionResult:
    with Helper("noop_server") as target:
        resources = {"web.yaml": component("web", "bindings.http", {"url": target.url})}
        sidecar = start_sidecar(settings.workdir / "binding-http", resources=resources, extra_args=QUIET)
        try:
            body = json.dumps({"operation": "get", "metadata": {"path": "/v1.0/state/s/k"}}).encode()
            found = interleaved(
                {
                    "target directly": lambda s: fixed_rate(settings, f"{target.url}/v1.0/state/s/k", s),
                    "Pillion, bindings.http": lambda s: fixed_rate(
                        settings, f"{sidecar.url}/v1.0/bindings/web", s, body=body
                    ),
                },
                settings.load_seconds,
            )
        finally:
            sidecar.stop()
    base, pillion = found["target directly"], found["Pillion, bindings.http"]
    return SectionResult(
        rows=latency_rows(
            "bindings.http GET round trip, 1,000 req/s, 16 conns, vs the target directly:",
            "direct",
            base,
            pillion,
        ),
        charts=[
            LatencyChart("binding-http-latency", "bindings.http GET at 1,000 req/s, 16 connections", found)
        ],
        data={"seconds": settings.load_seconds, "series": {k: asdict(v) for k, v in found.items()}},
    )


def lock_redis(settings: Settings, services: Services) -> SectionResult:
    url = services.redis_url()
    resources = {"lock.yaml": component("lockstore", "lock.redis", redis_metadata(url))}
    sidecar = start_sidecar(settings.workdir / "lock-redis", resources=resources, extra_args=QUIET)
    seconds = f"{settings.load_seconds:g}"
    try:
        run_module("lock_direct", "http", sidecar.url, str(CONCURRENCY), "1")  # warm-up
        pillion = float(run_module("lock_direct", "http", sidecar.url, str(CONCURRENCY), seconds))
        direct = float(run_module("lock_direct", "redis", url, str(CONCURRENCY), seconds))
    finally:
        sidecar.stop()
    return SectionResult(
        rows=[
            ratio_row(
                "lock+unlock pairs, 32-way, lock.redis vs redis-py (SET NX EX + Lua unlock)",
                "redis-py",
                direct,
                pillion,
                GOAL_LOCK_RATIO,
            )
        ],
        data={"pillion_pairs_per_s": pillion, "direct_pairs_per_s": direct, "seconds": settings.load_seconds},
    )


def configuration(settings: Settings, services: Services) -> SectionResult:
    workdir = settings.workdir / "configuration"
    workdir.mkdir()
    # A private server: the component turns keyspace notifications on, never on a shared one.
    with private_redis(workdir) as url, Helper("config_app", ready_path="/stats") as app:
        resources = {"c.yaml": component("config", "configuration.redis", redis_metadata(url))}
        sidecar = start_sidecar(
            workdir, resources=resources, extra_args=[*QUIET, "--app-port", str(app.port)]
        )
        try:
            client = redis_client.Redis.from_url(url)
            answer = httpx.get(f"{sidecar.url}/v1.0/configuration/config/subscribe?key=flag", timeout=10)
            answer.raise_for_status()
            # At least 150 updates, enough for a p99 even in a quick run.
            seconds = max(settings.load_seconds, 3.0)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                client.set("flag", str(time.monotonic_ns()))
                time.sleep(0.02)
            time.sleep(1)
            latencies = httpx.get(f"{app.url}/stats", timeout=10).json()["latencies_ns"]
            client.close()
        finally:
            sidecar.stop()
    found = Latency.from_samples(latencies, seconds)
    p50 = statistics.median(latencies) / 1e6
    return SectionResult(
        rows=[
            Row(
                "configuration.redis: write to Redis -> app has the update, p50 (p90, p99)",
                "",
                f"{ms(p50)} ({ms(found.p90_ms)}, {ms(found.p99_ms)})",
                "",
                f"p50 <= {GOAL_CONFIG_P50_MS:g} ms",
                p50 <= GOAL_CONFIG_P50_MS,
            )
        ],
        data={"latency": asdict(found), "updates": len(latencies)},
    )

"""gRPC API benchmarks (issue 14).

* ``grpc.latency``: GetState over gRPC on ``state.in-memory`` at 1,000 calls/s over 16 concurrent
  streams of one channel, against a no-op method of the same server (SetMetadata with an empty key,
  which passes every gate and does nothing) and against the same GET over HTTP at 1,000 req/s over
  16 connections; interleaved. Also the sidecar's CPU time per call on each path (from /proc).
* ``grpc.models``: the server models grpcio offers (grpc.aio on asyncio's loop, grpc.aio on uvloop,
  the threaded server), each answering the same call at the same load: CPU per call and latency.
* ``grpc.stream``: delivery throughput of a streaming subscription (SubscribeTopicEventsAlpha1) on
  ``pubsub.redis``: N messages already in the topic, against redis-py's XREADGROUP/XACK loop.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import grpc
import httpx
import redis as redis_client
from dapr.proto.runtime.v1 import metadata_pb2, state_pb2

from bench.common import (
    ROOT,
    BenchError,
    Latency,
    LatencyChart,
    Row,
    SectionResult,
    Settings,
    latency_rows,
    ratio_row,
    run_module,
)
from bench.pubsub import BULK_BATCH, direct, running
from bench.services import Services
from tests.state_support import component, redis_metadata
from tests.support import free_port, start_sidecar

APP_ID = "benchgrpc"
RATE = 1000
STREAMS = 16
# daprd v1.17's figures for GetState over gRPC, added over a no-op method.
GOAL_ADDED_MS = {"p50": 0.12, "p90": 0.04, "p99": 0.66}
GOAL_CPU_RATIO = 1.5
GOAL_STREAM_RATIO = 0.7
SERVICE = "/dapr.proto.runtime.v1.Dapr/"
MODELS = ("aio", "aio-uvloop", "threaded")

Measure = Callable[[float], tuple[Latency, float]]


def grpc_fixed_rate(
    target: str, method: str, request: bytes, seconds: float, pid: int | None
) -> tuple[Latency, float]:
    """Latency at 1,000 calls/s over 16 streams, and the CPU seconds per call of ``pid``."""
    found = run_module(
        "grpc_loadgen",
        target,
        method,
        request.hex(),
        str(RATE),
        str(STREAMS),
        f"{seconds:g}",
        *(["--pid", str(pid)] if pid else []),
    )
    if found["errors"]:
        raise BenchError(f"{found['errors']} of {found['sent']} calls to {method} failed: {found['codes']}")
    return Latency(**found["latency"]), found["cpu_seconds"] / found["sent"]


def http_fixed_rate(url: str, seconds: float, pid: int) -> tuple[Latency, float]:
    found = run_module("loadgen", url, str(RATE), str(STREAMS), f"{seconds:g}", "--pid", str(pid))
    if found["errors"]:
        raise BenchError(
            f"{found['errors']} of {found['sent']} requests to {url} failed: {found['statuses']}"
        )
    return Latency(**found["latency"]), found["cpu_seconds"] / found["sent"]


def interleaved(
    measures: dict[str, Measure], seconds: float, rounds: int = 2
) -> dict[str, tuple[Latency, float]]:
    """As bench.common.interleaved, keeping each side's CPU per call too (mean of the turns)."""
    for measure in measures.values():
        measure(min(2.0, seconds / rounds))
    runs: dict[str, list[tuple[Latency, float]]] = {name: [] for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            runs[name].append(measure(seconds / rounds))
    return {
        name: (Latency.mean_of([r[0] for r in found]), statistics.mean(r[1] for r in found))
        for name, found in runs.items()
    }


def cpu_row(measure: str, baseline_name: str, baseline: float, ours: float, goal: float) -> Row:
    ratio = ours / baseline if baseline else 0.0
    return Row(
        measure,
        f"{baseline * 1e6:.0f} µs ({baseline_name})",
        f"{ours * 1e6:.0f} µs",
        f"{ratio:.2f}x",
        f"<= {goal:g}x",
        ratio <= goal,
    )


def latency(settings: Settings, services: Services) -> SectionResult:
    ours = start_sidecar(
        settings.workdir / "grpc-latency",
        app_id=APP_ID,
        resources={"s.yaml": component("statestore", "state.in-memory", {})},
        extra_args=["--log-level", "warning"],
    )
    try:
        httpx.post(
            f"{ours.url}/v1.0/state/statestore", json=[{"key": "k", "value": {"n": 1}}]
        ).raise_for_status()
        target, pid = f"127.0.0.1:{ours.grpc_port}", ours.proc.pid
        get = state_pb2.GetStateRequest(store_name="statestore", key="k").SerializeToString()
        noop = metadata_pb2.SetMetadataRequest().SerializeToString()
        found = interleaved(
            {
                "gRPC no-op method": lambda s: grpc_fixed_rate(target, SERVICE + "SetMetadata", noop, s, pid),
                "gRPC GetState": lambda s: grpc_fixed_rate(target, SERVICE + "GetState", get, s, pid),
                "HTTP GET": lambda s: http_fixed_rate(f"{ours.url}/v1.0/state/statestore/k", s, pid),
            },
            settings.latency_seconds,
        )
    finally:
        ours.stop()
    (noop_latency, _), (get_latency, get_cpu), (http_latency, http_cpu) = (
        found["gRPC no-op method"],
        found["gRPC GetState"],
        found["HTTP GET"],
    )
    rows = latency_rows(
        "GetState over gRPC, 1,000/s, 16 streams, vs a no-op method:",
        "no-op",
        noop_latency,
        get_latency,
        GOAL_ADDED_MS,
    )
    rows += latency_rows("GetState over gRPC vs HTTP GET (16 conns):", "HTTP", http_latency, get_latency)
    rows.append(
        cpu_row("sidecar CPU per GetState, gRPC vs HTTP GET", "HTTP", http_cpu, get_cpu, GOAL_CPU_RATIO)
    )
    series = {name: value[0] for name, value in found.items()}
    return SectionResult(
        rows=rows,
        charts=[
            LatencyChart("grpc-getstate-latency", "GetState at 1,000/s: gRPC (16 streams) and HTTP", series)
        ],
        data={
            "seconds": settings.latency_seconds,
            "series": {k: asdict(v) for k, v in series.items()},
            "cpu_seconds_per_call": {name: value[1] for name, value in found.items()},
        },
    )


def _start_noop(model: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / f"{model}.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.grpc_noop_server", str(port), model],
            cwd=ROOT,
            stdout=log,
            stderr=log,
        )
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=10)
        except grpc.FutureTimeoutError:
            proc.kill()
            raise BenchError(f"bench.grpc_noop_server {model} did not start") from None
    return proc, port


def models(settings: Settings, services: Services) -> SectionResult:
    request = state_pb2.GetStateRequest(store_name="statestore", key="k").SerializeToString()
    found: dict[str, tuple[Latency, float]] = {}
    for model in MODELS:
        proc, port = _start_noop(model, settings.workdir / "grpc-models")
        try:
            method = SERVICE + "GetState"
            grpc_fixed_rate(f"127.0.0.1:{port}", method, request, min(2.0, settings.load_seconds), proc.pid)
            found[model] = grpc_fixed_rate(
                f"127.0.0.1:{port}", method, request, settings.load_seconds, proc.pid
            )
        finally:
            proc.terminate()
            proc.wait(10)
    base_latency, base_cpu = found["threaded"]
    rows = [
        Row(
            f"grpcio server model {model}: CPU per call, p50 (1,000/s, 16 streams)",
            f"{base_cpu * 1e6:.0f} µs, {base_latency.p50_ms:.2f} ms (threaded)",
            f"{cpu * 1e6:.0f} µs, {lat.p50_ms:.2f} ms",
            f"{cpu / base_cpu:.2f}x CPU",
        )
        for model, (lat, cpu) in found.items()
        if model != "threaded"
    ]
    return SectionResult(
        rows=rows,
        data={
            model: {"latency": asdict(lat), "cpu_seconds_per_call": cpu}
            for model, (lat, cpu) in found.items()
        },
    )


def stream(settings: Settings, services: Services) -> SectionResult:
    url = services.redis_url()
    resources = {"p.yaml": component("pubsub", "pubsub.redis", redis_metadata(url))}
    topic = f"bench-stream-{uuid.uuid4().hex[:8]}"
    count = settings.messages
    workdir = settings.workdir / "grpc-stream"
    try:
        with running(workdir / "publisher", resources) as publisher, httpx.Client(timeout=120) as client:
            for start in range(0, count, BULK_BATCH):
                entries = [
                    {"entryId": str(i), "event": {"n": i}, "contentType": "application/json"}
                    for i in range(start, min(count, start + BULK_BATCH))
                ]
                client.post(
                    f"{publisher.url}/v1.0-alpha1/publish/bulk/pubsub/{topic}", json=entries
                ).raise_for_status()
        with running(workdir / "subscriber", resources) as subscriber:
            limit = max(60.0, count / 100)
            found = run_module(
                "stream_subscriber",
                f"127.0.0.1:{subscriber.grpc_port}",
                "pubsub",
                topic,
                str(count),
                f"{limit:g}",
                timeout=limit + 30,
            )
        through_direct = direct("redis", url, "throughput", settings)
    finally:
        with redis_client.Redis.from_url(url) as client:
            client.delete(topic)
    seconds = (found["last_ns"] - found["first_ns"]) / 1e9
    per_s = (found["count"] - 1) / seconds
    return SectionResult(
        rows=[
            ratio_row(
                f"streaming subscription throughput, pubsub.redis, {count:,} messages",
                "redis-py direct",
                through_direct["per_s"],
                per_s,
                GOAL_STREAM_RATIO,
            )
        ],
        data={"pillion": {**found, "per_s": per_s}, "direct": through_direct},
    )

"""``--workers`` (issue 11, item 3): state GET and save throughput on Redis at 32 connections (wrk)
with the HTTP API served by one process and by two processes on one port, side by side in the same
run, in alternating rounds. The load generator shares the machine's cores with the sidecar and
Redis, as it would on a developer's machine."""

from __future__ import annotations

import json
import statistics
import subprocess
import time
import uuid

import httpx

from bench.common import BenchError, Row, SectionResult, Settings, need, ratio_row
from bench.services import Services
from tests.state_support import component, redis_metadata
from tests.support import start_sidecar

VALUE = "x" * 100
ROUNDS = 3


def _wrk(url: str, seconds: float, script: str | None = None) -> float:
    command = [need("wrk"), "-t", "1", "-c", "32", "-d", f"{max(1, round(seconds))}s"]
    if script is not None:
        command += ["-s", script]
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise BenchError(f"wrk saw errors from {url}:\n{out}")
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    raise BenchError(f"wrk printed no rate for {url}:\n{out}")


def section(settings: Settings, services: Services) -> SectionResult:
    workdir = settings.workdir / "workers"
    workdir.mkdir()
    resources = {"s.yaml": component("statestore", "state.redis", redis_metadata(services.redis_url()))}
    save = workdir / "save.lua"
    body = json.dumps([{"key": "w", "value": VALUE}])
    save.write_text(
        f"wrk.method = 'POST'\nwrk.body = '{body}'\nwrk.headers['Content-Type'] = 'application/json'\n"
    )
    found: dict[int, dict[str, list[float]]] = {n: {"get": [], "save": []} for n in (1, 2)}
    rounds = 1 if settings.quick else ROUNDS
    for round_ in range(rounds):
        for workers in (1, 2):
            sidecar = start_sidecar(
                workdir / f"r{round_}-w{workers}",
                f"bench-workers-{uuid.uuid4().hex[:6]}",
                resources,
                ["--log-level", "warning", "--workers", str(workers)],
            )
            try:
                saved = httpx.post(
                    f"{sidecar.url}/v1.0/state/statestore", json=[{"key": "k", "value": VALUE}]
                )
                saved.raise_for_status()
                time.sleep(2)  # the second process loads its components
                seconds = settings.load_seconds
                found[workers]["get"].append(_wrk(f"{sidecar.url}/v1.0/state/statestore/k", seconds))
                found[workers]["save"].append(
                    _wrk(f"{sidecar.url}/v1.0/state/statestore", seconds, str(save))
                )
            finally:
                sidecar.stop()
    rows: list[Row] = []
    for operation, label in (("get", "GET"), ("save", "save")):
        one = statistics.median(found[1][operation])
        two = statistics.median(found[2][operation])
        rows.append(
            ratio_row(
                f"State {label} on Redis, 32 conns, --workers 2 vs 1 (median of {rounds})",
                "--workers 1",
                one,
                two,
                None,
            )
        )
    return SectionResult(rows=rows, data={"requests_per_s": found})

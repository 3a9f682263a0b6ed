"""CPU cost per operation (issue 11): the sidecar's CPU time per request or delivered message, as a
ratio to a no-op ASGI app on the same server stack measured in the same run.

* Closed-loop load: ``wrk`` with 16 connections (each sends its next request when the last one
  answered), for ``--load-seconds`` after a short warm-up.
* CPU: user + system time of the serving process, from ``/proc/<pid>/stat``, read just before and
  just after the load, divided by the requests wrk completed. Unlike throughput, this figure
  barely moves when other work shares the machine: time the process spends waiting for a core is
  not counted.
* The floor: bench.noop_server ``--bare``, an ASGI callable answering a fixed body (GET) or reading
  the body and answering 204 (POST) on uvicorn + httptools + uvloop, as Pillion is served.
* Delivery: a sidecar with the subscriber app (bench.subscriber) is started and idle; a second
  sidecar then publishes N messages in bulk; the subscriber sidecar's CPU from before the publish
  until the app has all N, divided by N (its idle polling included).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis as redis_client

from bench.common import BenchError, Helper, Row, SectionResult, Settings, need
from bench.services import Services
from tests.state_support import component, redis_metadata
from tests.support import SidecarProcess, start_sidecar

APP_ID = "benchcpu"
CONNECTIONS = 16
SET_BODY = b'[{"key":"k","value":{"orderId":42,"item":"book","qty":2}}]'
PUBLISH_BODY = b'{"orderId":42,"item":"book","qty":2}'
BULK_BATCH = 250
# Ratio to the no-op floor the issue asks for, by row label.
GOALS = {
    "state GET, state.in-memory": 1.3,
    "state GET, state.redis": 2.5,
    "state SET, state.redis": 2.5,
    "publish, pubsub.redis": 2.5,
    "delivery, pubsub.redis": 3.0,
}
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (its children not included)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


@dataclass
class Cost:
    cpu_us: float  # CPU microseconds per operation
    per_s: float  # operations per second
    operations: int

    def as_json(self) -> dict[str, float]:
        return {"cpu_us": self.cpu_us, "per_s": self.per_s, "operations": self.operations}


_WRK_POST = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[{body}]==]
"""


def wrk(url: str, seconds: float, body: bytes | None) -> tuple[int, float]:
    """Closed-loop load at 16 connections: (requests completed, seconds)."""
    command = [need("wrk"), "-t", "1", "-c", str(CONNECTIONS), "-d", f"{max(1, round(seconds))}s"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        if body is not None:
            script.write(_WRK_POST.format(body=body.decode()))
            script.flush()
            command += ["-s", script.name]
        out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    found = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if "Non-2xx" in out or "Socket errors" in out or found is None:
        raise BenchError(f"wrk saw errors from {url}:\n{out}")
    elapsed = float(found.group(2)) / (1000 if found.group(3) == "ms" else 1)
    return int(found.group(1)), elapsed


def measure(pid: int, url: str, settings: Settings, body: bytes | None = None) -> Cost:
    wrk(url, 1, body)  # warm-up: connections, caches, the first script loads
    before = cpu_seconds(pid)
    requests, elapsed = wrk(url, settings.load_seconds, body)
    spent = cpu_seconds(pid) - before
    return Cost(spent / requests * 1e6, requests / elapsed, requests)


def sidecar(workdir: Path, resources: dict[str, str], app_port: int | None = None) -> SidecarProcess:
    args = ["--log-level", "warning"]
    if app_port is not None:
        args += ["--app-port", str(app_port)]
    return start_sidecar(
        workdir, app_id=APP_ID, resources=resources, extra_args=args, wait_path="/v1.0/healthz"
    )


@contextlib.contextmanager
def running(
    workdir: Path, resources: dict[str, str], app_port: int | None = None
) -> Iterator[SidecarProcess]:
    started = sidecar(workdir, resources, app_port)
    try:
        yield started
    finally:
        started.stop()


def state_costs(ours: SidecarProcess, settings: Settings) -> dict[str, Cost]:
    httpx.post(f"{ours.url}/v1.0/state/statestore", content=SET_BODY).raise_for_status()
    pid = ours.proc.pid
    return {
        "GET": measure(pid, f"{ours.url}/v1.0/state/statestore/k", settings),
        "SET": measure(pid, f"{ours.url}/v1.0/state/statestore", settings, SET_BODY),
    }


def delivery_cost(
    settings: Settings, workdir: Path, resources: dict[str, str], publisher: SidecarProcess, topic: str
) -> Cost:
    """Sidecar CPU per message delivered to a subscriber app (see the module's docstring)."""
    count = settings.messages
    with (
        Helper("subscriber", "pubsub", topic, ready_path="/stats") as app,
        running(workdir, resources, app.port) as ours,
        httpx.Client(timeout=120) as client,
    ):
        time.sleep(0.5)  # subscriptions started: let the first reads settle
        before = cpu_seconds(ours.proc.pid)
        began = time.monotonic()
        for start in range(0, count, BULK_BATCH):
            entries = [
                {"entryId": str(i), "event": {"n": i, "item": "book"}, "contentType": "application/json"}
                for i in range(start, min(count, start + BULK_BATCH))
            ]
            client.post(
                f"{publisher.url}/v1.0-alpha1/publish/bulk/pubsub/{topic}", json=entries
            ).raise_for_status()
        deadline = time.monotonic() + max(60.0, count / 50)
        while True:
            found: dict[str, Any] = client.get(f"{app.url}/stats").json()
            if found["count"] >= count:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"the subscriber got {found['count']} of {count} messages in time")
            time.sleep(0.05)
        spent = cpu_seconds(ours.proc.pid) - before
        elapsed = time.monotonic() - began
    seconds = (found["last_ns"] - found["first_ns"]) / 1e9 or elapsed
    return Cost(spent / found["count"] * 1e6, (found["count"] - 1) / seconds, found["count"])


def measure_all(settings: Settings, services: Services) -> tuple[dict[str, Cost], dict[str, str]]:
    """Every operation's cost, by label; and the sections that could not run, with why."""
    costs: dict[str, Cost] = {}
    skipped: dict[str, str] = {}
    workdir = settings.workdir / "cpu"
    with Helper("noop_server", "--bare") as noop:
        pid = noop.proc.pid
        costs["no-op GET"] = measure(pid, f"{noop.url}/v1.0/state/statestore/k", settings)
        costs["no-op POST"] = measure(pid, f"{noop.url}/v1.0/publish/pubsub/t", settings, PUBLISH_BODY)

    def publish(ours: SidecarProcess, name: str, topic: str) -> None:
        costs[f"publish, {name}"] = measure(
            ours.proc.pid, f"{ours.url}/v1.0/publish/pubsub/{topic}", settings, PUBLISH_BODY
        )

    def states(ours: SidecarProcess, name: str) -> None:
        for op, cost in state_costs(ours, settings).items():
            costs[f"state {op}, {name}"] = cost

    token = uuid.uuid4().hex[:8]
    memory = {
        "s.yaml": component("statestore", "state.in-memory", {}),
        "p.yaml": component("pubsub", "pubsub.in-memory", {}),
    }
    with running(workdir / "memory", memory) as ours:
        states(ours, "state.in-memory")
        publish(ours, "pubsub.in-memory", "t")

    database = workdir / "sqlite.db"
    sqlite = {
        "s.yaml": component("statestore", "state.sqlite", {"connectionString": str(workdir / "state.db")}),
        "p.yaml": component("pubsub", "pubsub.sqlite", {"connectionString": str(database)}),
    }
    with running(workdir / "sqlite", sqlite) as ours:
        states(ours, "state.sqlite")
        publish(ours, "pubsub.sqlite", f"publish-{token}")
        costs["delivery, pubsub.sqlite"] = delivery_cost(
            settings, workdir / "sqlite-sub", sqlite, ours, f"deliver-{token}"
        )

    try:
        url = services.redis_url()
    except BenchError as exc:
        skipped["redis"] = str(exc)
    else:
        on_redis = {
            "s.yaml": component("statestore", "state.redis", redis_metadata(url)),
            "p.yaml": component("pubsub", "pubsub.redis", redis_metadata(url)),
        }
        topics = (f"bench-cpu-{token}", f"bench-cpu-deliver-{token}")
        try:
            with running(workdir / "redis", on_redis) as ours:
                states(ours, "state.redis")
                publish(ours, "pubsub.redis", topics[0])
                costs["delivery, pubsub.redis"] = delivery_cost(
                    settings, workdir / "redis-sub", on_redis, ours, topics[1]
                )
        finally:
            with redis_client.Redis.from_url(url) as client:
                client.delete(*topics, f"{APP_ID}||k")

    try:
        url = services.postgres_url()
    except BenchError as exc:
        skipped["postgresql"] = str(exc)
    else:
        on_postgres = {"s.yaml": component("statestore", "state.postgresql", {"connectionString": url})}
        with running(workdir / "postgresql", on_postgres) as ours:
            states(ours, "state.postgresql")

    try:
        with services.jetstream_subjects() as prefix:
            nats = services.nats_url()
            on_jetstream = {
                "p.yaml": component("pubsub", "pubsub.jetstream", {"natsURL": nats, "topicPrefix": prefix})
            }
            with running(workdir / "jetstream", on_jetstream) as ours:
                publish(ours, "pubsub.jetstream", f"publish-{token}")
                costs["delivery, pubsub.jetstream"] = delivery_cost(
                    settings, workdir / "jetstream-sub", on_jetstream, ours, f"deliver-{token}"
                )
    except BenchError as exc:
        skipped["jetstream"] = str(exc)
    return costs, skipped


def section(settings: Settings, services: Services) -> SectionResult:
    costs, skipped = measure_all(settings, services)
    floor_get, floor_post = costs["no-op GET"], costs["no-op POST"]
    rows = [
        Row(
            "CPU per request, no-op ASGI app (the floor), GET / POST",
            "",
            f"{floor_get.cpu_us:.0f} / {floor_post.cpu_us:.0f} us",
            f"{floor_get.per_s:,.0f} / {floor_post.per_s:,.0f} req/s",
        )
    ]
    for label, cost in costs.items():
        if label.startswith("no-op"):
            continue
        floor = floor_get if label.startswith("state GET") else floor_post
        ratio = cost.cpu_us / floor.cpu_us
        goal = GOALS.get(label)
        unit = "message" if label.startswith("delivery") else "request"
        rows.append(
            Row(
                f"CPU per {unit}, {label} ({cost.per_s:,.0f}/s)",
                f"{floor.cpu_us:.0f} us (no-op {'GET' if floor is floor_get else 'POST'})",
                f"{cost.cpu_us:.0f} us",
                f"{ratio:.2f}x",
                "" if goal is None else f"<= {goal:g}x",
                None if goal is None else ratio <= goal,
            )
        )
    for name, why in skipped.items():
        rows.append(Row(f"CPU per operation on {name}: NOT MEASURED", "", why.split("\n")[0], "", "", False))
    return SectionResult(
        rows=rows,
        data={
            "connections": CONNECTIONS,
            "seconds": settings.load_seconds,
            "messages": settings.messages,
            "costs": {label: cost.as_json() for label, cost in costs.items()},
        },
    )

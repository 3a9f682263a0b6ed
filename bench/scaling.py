"""What grows on a shared backend with the number of sidecars (issue 8; docs/scaling.md).

    python -m bench.scaling [--seconds 5] [--sidecars 1,4,8] [--no-postgres]

For each N, N sidecars of one app id share one backend, as the replicas of one Deployment do, and
each gets the same closed-loop write load (wrk, 4 connections, POST /v1.0/state). Read off the
backend: its connections at the peak, the consumers in the app's group (Redis), and the backend's
own CPU time per write, which says how far one backend stretches once the sidecars run on machines
of their own. Redis is a private redis-server on a free port; PostgreSQL is a private database on
PILLION_POSTGRES_URL's server (default: the local one); one that does not answer fails the run
(--no-postgres leaves PostgreSQL out).

Needs wrk and redis-server. Takes about a minute and a half with the defaults. ``python -m bench.run``
runs it too, as its ``scaling`` section.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import redis

from bench.common import BenchError, need
from bench.services import private_redis
from tests.postgres_support import HOW_TO_GET_POSTGRES, fetch, private_database, server_url
from tests.state_support import component, redis_metadata
from tests.support import SidecarProcess, start_sidecar

RESULTS = Path(__file__).resolve().parent / "results"
APP_ID = "scaleapp"
TOPIC = "orders"
CONNECTIONS_PER_SIDECAR = 4
# Distinct keys, so writes do not all contend for one key's script run.
WRITE_SCRIPT = """
local i = 0
request = function()
  i = i + 1
  local body = '[{"key":"k' .. (i % 1000) .. '","value":{"n":' .. i .. '}}]'
  return wrk.format("POST", "/v1.0/state/statestore", {["Content-Type"] = "application/json"}, body)
end
"""


@dataclass
class Phase:
    backend: str
    sidecars: int
    writes_per_s: float
    peak_connections: int
    idle_connections: int
    consumers: int | None
    backend_cpu_us_per_write: float | None
    sidecar_cpu_us_per_write: float
    sidecar_rss_mb: float


class _App(BaseHTTPRequestHandler):
    """The app behind every sidecar: one subscription, so each sidecar becomes a consumer."""

    def do_GET(self) -> None:
        self._reply(json.dumps([{"pubsubname": "pubsub", "topic": TOPIC, "route": "/orders"}]).encode())

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._reply(b'{"status":"SUCCESS"}')

    def _reply(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@contextlib.contextmanager
def app_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _App)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def wrk_writes(url: str, script: Path, seconds: float) -> float:
    command = [need("wrk"), "-t", "1", "-c", str(CONNECTIONS_PER_SIDECAR), "-d", f"{max(1, round(seconds))}s"]
    out = subprocess.run(
        [*command, "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if "Non-2xx" in out or found is None:
        raise BenchError(f"wrk saw errors from {url}:\n{out}")
    return float(found.group(1))


@contextlib.contextmanager
def peak_of(sample: Callable[[], int]) -> Iterator[list[int]]:
    """Sample ``sample()`` every 0.2 s while the block runs; the list holds the samples."""
    samples: list[int] = []
    done = threading.Event()

    def loop() -> None:
        while not done.wait(0.2):
            samples.append(sample())

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join()


def start_many(count: int, start: Callable[[int], SidecarProcess]) -> list[SidecarProcess]:
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(start, range(count)))


def stop_all(sidecars: list[SidecarProcess]) -> None:
    with ThreadPoolExecutor(max_workers=len(sidecars)) as pool:
        list(pool.map(lambda s: s.stop(), sidecars))


def cpu_seconds(sidecars: list[SidecarProcess]) -> float:
    total = 0.0
    for sidecar in sidecars:
        times = psutil.Process(sidecar.proc.pid).cpu_times()
        total += times.user + times.system
    return total


def load(sidecars: list[SidecarProcess], script: Path, seconds: float) -> float:
    with ThreadPoolExecutor(max_workers=len(sidecars)) as pool:
        return sum(pool.map(lambda s: wrk_writes(s.url, script, seconds), sidecars))


def redis_phase(workdir: Path, url: str, count: int, app_port: int, script: Path, seconds: float) -> Phase:
    client = redis.Redis.from_url(url)
    resources = {
        "state.yaml": component("statestore", "state.redis", redis_metadata(url)),
        "pubsub.yaml": component("pubsub", "pubsub.redis", redis_metadata(url)),
    }

    def start(i: int) -> SidecarProcess:
        return start_sidecar(
            workdir / f"redis-{count}-{i}",
            app_id=APP_ID,
            resources=resources,
            extra_args=["--log-level", "warning", "--app-port", str(app_port)],
        )

    def clients() -> int:
        # Less the bench's own connection.
        return int(client.info("clients")["connected_clients"]) - 1

    def consumers() -> int:
        with contextlib.suppress(redis.ResponseError):
            for group in client.xinfo_groups(TOPIC):
                if group["name"] in (APP_ID, APP_ID.encode()):
                    return int(group["consumers"])
        return 0

    def redis_cpu() -> float:
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    sidecars = start_many(count, start)
    try:
        # Redis 7.0 counts a consumer once it has read an entry: publish until each one has.
        deadline = time.monotonic() + 10
        sent = 0
        while consumers() < count and time.monotonic() < deadline:
            httpx.post(f"{sidecars[sent % count].url}/v1.0/publish/pubsub/{TOPIC}", json={"n": sent})
            sent += 1
            time.sleep(0.02)
        idle = clients()
        joined = consumers()
        cpu_before, backend_before = cpu_seconds(sidecars), redis_cpu()
        with peak_of(clients) as samples:
            rate = load(sidecars, script, seconds)
        writes = rate * seconds
        backend_cpu = redis_cpu() - backend_before
        sidecar_cpu = cpu_seconds(sidecars) - cpu_before
        rss = statistics.median(psutil.Process(s.proc.pid).memory_info().rss / 2**20 for s in sidecars)
    finally:
        stop_all(sidecars)
        client.close()
    return Phase(
        backend="redis",
        sidecars=count,
        writes_per_s=rate,
        peak_connections=max(samples, default=idle),
        idle_connections=idle,
        consumers=joined,
        backend_cpu_us_per_write=backend_cpu / writes * 1e6,
        sidecar_cpu_us_per_write=sidecar_cpu / writes * 1e6,
        sidecar_rss_mb=rss,
    )


def postgres_phase(workdir: Path, url: str, count: int, script: Path, seconds: float) -> Phase:
    database = url.rsplit("/", 1)[1]
    resources = {"state.yaml": component("statestore", "state.postgresql", {"connectionString": url})}

    def start(i: int) -> SidecarProcess:
        return start_sidecar(
            workdir / f"postgres-{count}-{i}",
            app_id=APP_ID,
            resources=resources,
            extra_args=["--log-level", "warning"],
        )

    def connections() -> int:
        rows = fetch(
            url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'pillion'",
            database,
        )
        return int(rows[0][0])

    sidecars = start_many(count, start)
    try:
        idle = connections()
        cpu_before = cpu_seconds(sidecars)
        with peak_of(connections) as samples:
            rate = load(sidecars, script, seconds)
        sidecar_cpu = cpu_seconds(sidecars) - cpu_before
        rss = statistics.median(psutil.Process(s.proc.pid).memory_info().rss / 2**20 for s in sidecars)
    finally:
        stop_all(sidecars)
    return Phase(
        backend="postgresql",
        sidecars=count,
        writes_per_s=rate,
        peak_connections=max(samples, default=idle),
        idle_connections=idle,
        consumers=None,
        # The server's CPU is spread over one process per connection; not read here.
        backend_cpu_us_per_write=None,
        sidecar_cpu_us_per_write=sidecar_cpu / (rate * seconds) * 1e6,
        sidecar_rss_mb=rss,
    )


def postgres_reachable(server: str) -> bool:
    try:
        fetch(server, "SELECT 1")
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return False
    return True


def table(results: dict[str, Any]) -> str:
    lines = [
        f"Machine: {results['machine']}; {results['seconds']:g} s of load per row, "
        f"{CONNECTIONS_PER_SIDECAR} connections per sidecar.",
        "",
        "| backend | sidecars | writes/s, all | per sidecar | backend connections idle / peak | consumers "
        "| backend CPU per write | sidecar CPU per write | sidecar RSS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["phases"]:
        backend_cpu = row["backend_cpu_us_per_write"]
        lines.append(
            f"| {row['backend']} | {row['sidecars']} | {row['writes_per_s']:.0f} "
            f"| {row['writes_per_s'] / row['sidecars']:.0f} "
            f"| {row['idle_connections']} / {row['peak_connections']} "
            f"| {'' if row['consumers'] is None else row['consumers']} "
            f"| {'' if backend_cpu is None else f'{backend_cpu:.0f} µs'} "
            f"| {row['sidecar_cpu_us_per_write']:.0f} µs | {row['sidecar_rss_mb']:.0f} MB |"
        )
    return "\n".join(lines)


def measure(workdir: Path, counts: list[int], seconds: float, with_postgres: bool = True) -> dict[str, Any]:
    """Every phase: Redis for each count, then PostgreSQL (a failure when it does not answer)."""
    need("wrk")
    load_average = os.getloadavg()[0]
    phases: list[Phase] = []
    server = server_url()
    if with_postgres and not postgres_reachable(server):
        raise BenchError(f"PostgreSQL at {server} does not answer. {HOW_TO_GET_POSTGRES}")
    with app_server() as app_port:
        script = workdir / "write.lua"
        script.write_text(WRITE_SCRIPT)
        with private_redis(workdir) as url:
            version = redis.Redis.from_url(url).info("server")["redis_version"]
            phases += [redis_phase(workdir, url, n, app_port, script, seconds) for n in counts]
        if with_postgres:
            with private_database(server) as database:
                phases += [postgres_phase(workdir, database, n, script, seconds) for n in counts]
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}, "
        f"Redis {version}, everything on this one machine, load average {load_average:.2f} before the run",
        "seconds": seconds,
        "phases": [asdict(p) for p in phases],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5, help="length of each load (5)")
    parser.add_argument("--sidecars", default="1,4,8", help="numbers of sidecars to run side by side (1,4,8)")
    parser.add_argument("--no-postgres", action="store_true", help="measure Redis only")
    args = parser.parse_args()
    counts = [int(n) for n in args.sidecars.split(",")]
    with tempfile.TemporaryDirectory(prefix="pillion-scaling-") as tmp:
        try:
            results = measure(Path(tmp), counts, args.seconds, with_postgres=not args.no_postgres)
        except BenchError as exc:
            sys.exit(f"bench.scaling: {exc}")
    RESULTS.mkdir(exist_ok=True)
    stem = "scaling-" + datetime.now(UTC).strftime("%Y-%m-%dT%H%M%S")
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = table(results)
    (RESULTS / f"{stem}.md").write_text(markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    main()

"""Issue-2 benchmarks, side by side in one run; prints a Markdown table and writes JSON.

    python -m bench.run [--seconds 20] [--redis-url redis://127.0.0.1:6379/15]

Needs `hey` and `wrk` (Debian: apt-get install hey wrk). Each figure is paired with a baseline
measured in the same run, so the ratios hold even on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
import redis

from tests.state_support import component, redis_metadata
from tests.support import SidecarProcess, free_port, start_sidecar

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Latency:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests_per_s: float


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        sys.exit(f"bench needs `{tool}`: apt-get install {tool}")
    return path


def hey_fixed_rate(url: str, seconds: float, rate: int = 1000, connections: int = 16) -> Latency:
    """Dapr's method: a fixed total rate spread over a fixed number of connections."""
    out = subprocess.run(
        [need("hey"), "-z", f"{seconds}s", "-c", str(connections), "-q", str(rate / connections), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    percentiles = {int(p): float(s) * 1000 for p, s in re.findall(r"(\d+)% in ([\d.]+) secs", out)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    statuses = re.findall(r"\[(\d+)\]\s+(\d+) responses", out)
    bad = [s for s in statuses if s[0] not in ("200", "204")]
    if bad:
        sys.exit(f"unexpected statuses from {url}: {bad}")
    return Latency(percentiles[50], percentiles[90], percentiles[99], rps)


def wrk_throughput(url: str, seconds: float, connections: int = 32) -> float:
    out = subprocess.run(
        [need("wrk"), "-t", "1", "-c", str(connections), "-d", f"{seconds}s", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out:
        sys.exit(f"wrk saw errors from {url}:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def start_noop(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.noop_server", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1.0/state/statestore/k"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return proc, url
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("the no-op baseline server did not start")


def latency_section(workdir: Path, seconds: float) -> dict[str, object]:
    sidecar = start_sidecar(
        workdir / "latency",
        resources={"s.yaml": component("statestore", "state.in-memory", {})},
        extra_args=["--log-level", "warning"],
    )
    noop, noop_url = start_noop(workdir)
    try:
        httpx.post(sidecar.url + "/v1.0/state/statestore", json=[{"key": "k", "value": {"n": 1}}])
        pillion_url = sidecar.url + "/v1.0/state/statestore/k"
        for url in (noop_url, pillion_url):  # warm both up
            hey_fixed_rate(url, 2)
        # Interleave (ABAB) so drift in machine load hits both sides alike.
        base: list[Latency] = []
        ours: list[Latency] = []
        for _ in range(2):
            base.append(hey_fixed_rate(noop_url, seconds / 2))
            ours.append(hey_fixed_rate(pillion_url, seconds / 2))
    finally:
        sidecar.stop()
        noop.send_signal(signal.SIGTERM)
        noop.wait(10)

    def merge(runs: list[Latency]) -> Latency:
        return Latency(*(statistics.mean(getattr(r, f) for r in runs) for f in Latency.__dataclass_fields__))

    b, p = merge(base), merge(ours)
    return {
        "baseline": asdict(b),
        "pillion": asdict(p),
        "added_ms": {
            "p50": p.p50_ms - b.p50_ms,
            "p90": p.p90_ms - b.p90_ms,
            "p99": p.p99_ms - b.p99_ms,
        },
        "goal_added_ms": {"p50": 0.28, "p90": 0.71, "p99": 0.98},
    }


def redis_section(workdir: Path, redis_url: str, seconds: float) -> dict[str, object]:
    sidecar = start_sidecar(
        workdir / "redis",
        resources={"s.yaml": component("statestore", "state.redis", redis_metadata(redis_url))},
        extra_args=["--log-level", "warning"],
    )
    key = f"bench-{os.getpid()}"
    try:
        httpx.post(sidecar.url + "/v1.0/state/statestore", json=[{"key": key, "value": {"n": 1}}])
        url = f"{sidecar.url}/v1.0/state/statestore/{key}"
        wrk_throughput(url, 2)
        through_pillion = wrk_throughput(url, seconds)
        direct = float(
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.redis_direct",
                    redis_url,
                    f"testapp||{key}",
                    "32",
                    str(seconds),
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
    finally:
        sidecar.stop()
        redis.Redis.from_url(redis_url).delete(f"testapp||{key}")
    return {
        "pillion_rps": through_pillion,
        "direct_redis_py_ops": direct,
        "ratio": through_pillion / direct,
        "goal_ratio": 0.7,
    }


def startup_and_rss(workdir: Path, runs: int = 5) -> dict[str, object]:
    times: list[float] = []
    rss: list[float] = []
    for i in range(runs):
        start = time.perf_counter()
        sidecar: SidecarProcess = start_sidecar(workdir / f"start-{i}", wait_path="/v1.0/healthz", timeout=10)
        times.append(time.perf_counter() - start)
        time.sleep(2)  # idle
        rss.append(psutil.Process(sidecar.proc.pid).memory_info().rss / 2**20)
        sidecar.stop()
    return {
        "start_to_serving_s": statistics.median(times),
        "start_samples_s": times,
        "idle_rss_mb": statistics.median(rss),
        "goal_start_s": 0.7,
        "goal_idle_rss_mb": 60,
    }


def table(results: dict[str, object]) -> str:
    lat = results["latency"]
    red = results["redis"]
    up = results["startup"]
    assert isinstance(lat, dict) and isinstance(up, dict)
    b, p, added = lat["baseline"], lat["pillion"], lat["added_ms"]
    lines = [
        f"Machine: {results['machine']}",
        "",
        "| measure | baseline | Pillion | Pillion - baseline (goal) |",
        "|---|---|---|---|",
    ]
    for q in ("p50", "p90", "p99"):
        goal = lat["goal_added_ms"][q]
        lines.append(
            f"| GET latency {q}, 1,000 req/s, 16 conns (in-memory vs no-op) | {b[q + '_ms']:.2f} ms "
            f"| {p[q + '_ms']:.2f} ms | +{added[q]:.2f} ms (<= +{goal} ms) |"
        )
    if isinstance(red, dict):
        lines.append(
            "| GET throughput, 32 conns (state.redis vs redis-py direct) "
            f"| {red['direct_redis_py_ops']:.0f}/s | {red['pillion_rps']:.0f}/s "
            f"| {red['ratio']:.2f}x (>= 0.7x) |"
        )
    lines.append(f"| start to serving | | {up['start_to_serving_s']:.2f} s | (<= 0.7 s) |")
    lines.append(f"| idle RSS | | {up['idle_rss_mb']:.1f} MB | (<= 60 MB) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20, help="length of each timed load (20)")
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL"), help="Redis for the throughput run"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pillion-bench-") as tmp:
        workdir = Path(tmp)
        results: dict[str, object] = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}",
        }
        results["startup"] = startup_and_rss(workdir)
        results["latency"] = latency_section(workdir, args.seconds)
        if args.redis_url:
            results["redis"] = redis_section(workdir, args.redis_url, min(args.seconds, 10))
        else:
            results["redis"] = None
            print("no --redis-url / REDIS_URL: skipping the Redis throughput pair", file=sys.stderr)
    RESULTS.mkdir(exist_ok=True)
    stem = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%S")
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = table(results)
    (RESULTS / f"{stem}.md").write_text(markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    main()

"""What every benchmark section shares: load tools, latency summaries, and the shape of a result.

A section measures Pillion and a baseline in the same run and returns a :class:`SectionResult`:
rows for the summary table (each a pair or a ratio, with the issue's goal), latency charts, and
the raw figures for the JSON file.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent

HOW_TO_GET = {
    "hey": "apt-get install hey (Debian/Ubuntu), or `go install github.com/rakyll/hey@latest`",
    "wrk": "apt-get install wrk (Debian/Ubuntu)",
    "redis-server": "apt-get install redis-server (Debian/Ubuntu), or set REDIS_URL to a Redis the "
    "benchmark may write to",
}


class BenchError(Exception):
    """A section cannot run or went wrong; the message says what to do about it."""


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BenchError(f"`{tool}` is not on the PATH: {HOW_TO_GET.get(tool, f'install {tool}')}")
    return path


@dataclass
class Latency:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests_per_s: float

    @classmethod
    def from_samples(cls, samples_ns: Sequence[int], seconds: float) -> Latency:
        if len(samples_ns) < 100:
            raise BenchError(f"only {len(samples_ns)} latency samples: too few for a p99")
        cuts = statistics.quantiles(samples_ns, n=100, method="inclusive")
        return cls(cuts[49] / 1e6, cuts[89] / 1e6, cuts[98] / 1e6, len(samples_ns) / seconds)

    @classmethod
    def mean_of(cls, runs: Sequence[Latency]) -> Latency:
        return cls(
            *(statistics.mean(getattr(run, name) for run in runs) for name in cls.__dataclass_fields__)
        )

    def quantiles(self) -> dict[str, float]:
        return {"p50": self.p50_ms, "p90": self.p90_ms, "p99": self.p99_ms}


@dataclass
class Row:
    """One line of the summary table: what was measured, the baseline, Pillion, the comparison."""

    measure: str
    baseline: str
    pillion: str
    comparison: str
    goal: str = ""
    met: bool | None = None


@dataclass
class LatencyChart:
    """One PNG: p50/p90/p99 of Pillion next to its baseline(s), all measured in this run."""

    slug: str
    title: str
    series: dict[str, Latency]


@dataclass
class SectionResult:
    rows: list[Row] = field(default_factory=list)
    charts: list[LatencyChart] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    # A table of its own (bench.scaling's), shown under the summary.
    extra_markdown: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": [asdict(row) for row in self.rows],
            "charts": [
                {"slug": c.slug, "title": c.title, "series": {k: asdict(v) for k, v in c.series.items()}}
                for c in self.charts
            ],
            "data": self.data,
        }


@dataclass(frozen=True)
class Settings:
    """Durations for one run; ``--quick`` shrinks them all for a smoke run."""

    latency_seconds: float  # the issue-2 latency pair (the issue asks for at least 20 s)
    load_seconds: float  # every other timed load
    messages: int  # messages for the delivery-throughput runs
    starts: int  # repetitions of start-up measurements
    scrapes: int  # /metrics scrapes for the resource monitor's cost
    workdir: Path
    quick: bool = False
    # "loadgen" (bench.loadgen: staggered connections, ns timing) or "hey" (lock-step bursts).
    latency_tool: str = "loadgen"


def cpu_seconds(pid: int | None) -> float:
    """User plus system CPU time of process ``pid`` so far (0 without a pid)."""
    if pid is None:
        return 0.0
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


# --- load generators ----------------------------------------------------------------------------


def fixed_rate(
    settings: Settings,
    url: str,
    seconds: float,
    body: bytes | None = None,
    rate: int = 1000,
    connections: int = 16,
) -> Latency:
    """Latency at a fixed total rate over a fixed number of connections: GET, or POST of ``body``."""
    if settings.latency_tool == "hey":
        return hey_fixed_rate(url, seconds, rate, connections, body)
    args = [url, str(rate), str(connections), f"{seconds:g}"]
    if body is not None:
        args += ["--post", body.decode()]
    found = run_module("loadgen", *args)
    if found["errors"]:
        raise BenchError(
            f"{found['errors']} of {found['sent']} requests to {url} failed: {found['statuses']}"
        )
    return Latency(**found["latency"])


def hey_fixed_rate(
    url: str,
    seconds: float,
    rate: int = 1000,
    connections: int = 16,
    body: bytes | None = None,
) -> Latency:
    """Dapr's method: a fixed total rate spread over a fixed number of connections (GET, or POST
    of ``body`` as JSON)."""
    command = [need("hey"), "-z", f"{seconds:g}s", "-c", str(connections), "-q", f"{rate / connections:g}"]
    if body is not None:
        command += ["-m", "POST", "-T", "application/json", "-d", body.decode()]
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    percentiles = {int(p): float(s) * 1000 for p, s in re.findall(r"(\d+)% in ([\d.]+) secs", out)}
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    statuses = re.findall(r"\[(\d+)\]\s+(\d+) responses", out)
    bad = [s for s in statuses if s[0] not in ("200", "204")]
    if bad or found is None or not {50, 90, 99} <= percentiles.keys():
        raise BenchError(f"hey against {url}: unexpected answers {bad}\n{out}")
    return Latency(percentiles[50], percentiles[90], percentiles[99], float(found.group(1)))


def wrk_throughput(url: str, seconds: float, connections: int = 32) -> float:
    # wrk reads whole seconds only ("1.5s" is a usage error).
    out = subprocess.run(
        [need("wrk"), "-t", "1", "-c", str(connections), "-d", f"{max(1, round(seconds))}s", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if "Non-2xx" in out or "Socket errors" in out or found is None:
        raise BenchError(f"wrk saw errors from {url}:\n{out}")
    return float(found.group(1))


def interleaved(
    measures: dict[str, Callable[[float], Latency]], seconds: float, rounds: int = 2
) -> dict[str, Latency]:
    """Run each measure ``rounds`` times in turn (ABAB...), ``seconds`` in all per measure, so that
    drift in the machine's load hits every side alike; warm each up first."""
    for measure in measures.values():
        measure(min(2.0, seconds / rounds))
    runs: dict[str, list[Latency]] = {name: [] for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            runs[name].append(measure(seconds / rounds))
    return {name: Latency.mean_of(found) for name, found in runs.items()}


# --- helper processes ---------------------------------------------------------------------------


def run_module(module: str, *args: str, timeout: float = 300) -> Any:
    """Run ``python -m bench.<module> args`` and return the JSON it prints."""
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"bench.{module} {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout)


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{' '.join(map(str, proc.args))} exited with {proc.returncode}")  # type: ignore[arg-type]
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.02)
    proc.kill()
    raise BenchError(f"nothing answered at {url} within {timeout:g} s")


class Helper:
    """A helper server (``python -m bench.<module> <port> args...``) for the length of a block."""

    def __init__(self, module: str, *args: str, ready_path: str = "/") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # A file, not a pipe: a chatty helper must never block on a full pipe nobody reads.
        self.output = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"bench.{module}", str(self.port), *args],
            cwd=ROOT,
            stdout=self.output,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_http(self.url + ready_path, self.proc)
        except BenchError as exc:
            raise BenchError(f"{exc}: {self.stop()}") from None
        except BaseException:
            self.stop()
            raise

    def stop(self) -> str:
        """Stop the helper; return what it wrote."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.output.seek(0)
        text = self.output.read().decode(errors="replace")
        self.output.close()
        return text

    def __enter__(self) -> Helper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- formatting ---------------------------------------------------------------------------------


def ms(value: float) -> str:
    return f"{value:.2f} ms"


def per_s(value: float) -> str:
    return f"{value:,.0f}/s"


def latency_rows(
    label: str,
    baseline_name: str,
    baseline: Latency,
    pillion: Latency,
    goals_added_ms: dict[str, float] | None = None,
    goals_ms: dict[str, float] | None = None,
) -> list[Row]:
    """p50/p90/p99 rows of a latency pair; goals on the added latency or on Pillion's own."""
    rows = []
    for q, base in baseline.quantiles().items():
        ours = pillion.quantiles()[q]
        goal, met = "", None
        if goals_added_ms and q in goals_added_ms:
            goal, met = f"<= +{goals_added_ms[q]:g} ms added", ours - base <= goals_added_ms[q]
        elif goals_ms and q in goals_ms:
            goal, met = f"Pillion <= {goals_ms[q]:g} ms", ours <= goals_ms[q]
        rows.append(
            Row(
                f"{label} {q}", f"{ms(base)} ({baseline_name})", ms(ours), f"{ours - base:+.2f} ms", goal, met
            )
        )
    return rows


def ratio_row(
    measure: str, baseline_name: str, baseline: float, pillion: float, goal: float | None, unit: str = "/s"
) -> Row:
    ratio = pillion / baseline if baseline else 0.0
    return Row(
        measure,
        f"{baseline:,.0f}{unit} ({baseline_name})",
        f"{pillion:,.0f}{unit}",
        f"{ratio:.2f}x",
        "" if goal is None else f">= {goal:g}x",
        None if goal is None else ratio >= goal,
    )

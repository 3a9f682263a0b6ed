"""What ``pillion dashboard`` costs the sidecars it watches, and how soon a change shows (issue 17).

    python -m bench.dashboard [--sidecars 20] [--seconds 20]

N idle sidecars register in a private run dir. Each sidecar's CPU time (from /proc) is read over
the same window twice: with no dashboard (the baseline: what an idle sidecar costs anyway), then
with ``pillion dashboard`` at its default refresh interval and a client long-polling its snapshot
as the page does. The difference per sidecar, in % of one core, is the refresh's cost.

Then, a message is published through one sidecar while the client waits for the snapshot: the time
from the publish's answer until the snapshot shows the sidecar's ``published`` count go up is what
the page waits to show a change (the page draws a snapshot as soon as it arrives).

``python -m bench.run`` runs it as its ``dashboard`` section.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.common import BenchError, Row, SectionResult, Settings
from bench.services import Services
from tests.support import SidecarProcess, free_port, start_sidecar

GOAL_CPU_PERCENT = 1.0
GOAL_CHANGE_SECONDS = 2.0


def _cpu(pids: list[int]) -> list[float]:
    found = []
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        found.append(times.user + times.system)
    return found


def _per_sidecar_percent(pids: list[int], seconds: float) -> list[float]:
    before = _cpu(pids)
    time.sleep(seconds)
    after = _cpu(pids)
    return [100 * (b - a) / seconds for a, b in zip(before, after, strict=True)]


@contextlib.contextmanager
def _sidecars(workdir: Path, count: int, run_dir: Path) -> Iterator[list[SidecarProcess]]:
    started: list[SidecarProcess] = []
    env = {"PILLION_RUN_DIR": str(run_dir)}
    try:
        # A few at a time: 20 Python start-ups at once on 2 cores would time out.
        with ThreadPoolExecutor(4) as pool:
            started.extend(
                pool.map(
                    lambda i: start_sidecar(
                        workdir / f"s{i}",
                        app_id=f"bench{i:02d}",
                        env=env,
                        extra_args=["--log-level", "warning"],
                    ),
                    range(count),
                )
            )
        yield started
    finally:
        for sidecar in started:
            sidecar.stop()


@contextlib.contextmanager
def _dashboard(workdir: Path, run_dir: Path) -> Iterator[str]:
    port = free_port()
    log = (workdir / "dashboard.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", "dashboard", "--port", str(port), "--log-level", "warning"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PILLION_RUN_DIR": str(run_dir)},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(
                    f"pillion dashboard did not start: {(workdir / 'dashboard.log').read_text()}"
                )
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


class PageClient:
    """Long-polls the snapshot as the page does, on a thread of its own."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=15)
        self.seq = 0
        self.latest: dict[str, Any] = {}

    def next(self) -> dict[str, Any]:
        snapshot: dict[str, Any] = self.client.get(f"/api/snapshot?since={self.seq}&wait=1").json()
        self.seq = snapshot["seq"]
        self.latest = snapshot
        return snapshot


def measure(workdir: Path, count: int, seconds: float, changes: int) -> dict[str, Any]:
    run_dir = workdir / "run"
    with _sidecars(workdir, count, run_dir) as sidecars:
        pids = [s.proc.pid for s in sidecars]
        time.sleep(2)  # start-up work settles
        idle = _per_sidecar_percent(pids, seconds)
        with _dashboard(workdir, run_dir) as url:
            page = PageClient(url)
            deadline = time.monotonic() + 20
            while len(page.next()["apps"]) < count:
                if time.monotonic() > deadline:
                    raise BenchError(f"the dashboard shows {len(page.latest['apps'])} of {count} sidecars")
            with ThreadPoolExecutor(1) as pool:
                stop = threading.Event()

                def keep_polling() -> None:
                    while not stop.is_set():
                        page.next()

                polling = pool.submit(keep_polling)
                watched = _per_sidecar_percent(pids, seconds)
                stop.set()
                polling.result()
            delays = []
            target = sidecars[0]
            with target.client() as client:
                for _ in range(changes):
                    before = next(a for a in page.latest["apps"] if a["pid"] == target.proc.pid)["published"]
                    time.sleep(random.uniform(0.0, 1.0))  # at any point of the refresh cycle
                    if client.post("/v1.0/publish/pubsub/bench", json={"n": 1}).status_code != 204:
                        raise BenchError("publishing to the watched sidecar failed")
                    published = time.monotonic()
                    while True:
                        snapshot = page.next()
                        app = next(a for a in snapshot["apps"] if a["pid"] == target.proc.pid)
                        if (app["published"] or 0) > (before or 0):
                            delays.append(time.monotonic() - published)
                            break
                        if time.monotonic() - published > 10:
                            raise BenchError("the change did not show within 10 s")
    cost = [w - i for w, i in zip(watched, idle, strict=True)]
    return {
        "sidecars": count,
        "seconds": seconds,
        "idle_percent": idle,
        "watched_percent": watched,
        "cost_percent": cost,
        "change_seconds": delays,
        "load_average": os.getloadavg(),
    }


def rows(found: dict[str, Any]) -> list[Row]:
    cost, delays = found["cost_percent"], found["change_seconds"]
    mean_cost, worst_cost = statistics.mean(cost), max(cost)
    mean_idle = statistics.mean(found["idle_percent"])
    return [
        Row(
            f"dashboard: refresh cost per sidecar ({found['sidecars']} sidecars, 1 s refresh)",
            f"{mean_idle:.2f} % of a core (idle, no dashboard)",
            f"{statistics.mean(found['watched_percent']):.2f} % (watched)",
            f"+{mean_cost:.2f} % mean, +{worst_cost:.2f} % worst",
            f"< {GOAL_CPU_PERCENT:g} % of a core",
            worst_cost < GOAL_CPU_PERCENT,
        ),
        Row(
            "dashboard: publish to change shown",
            "-",
            f"{statistics.median(delays):.2f} s median, {max(delays):.2f} s worst of {len(delays)}",
            "-",
            f"< {GOAL_CHANGE_SECONDS:g} s",
            max(delays) < GOAL_CHANGE_SECONDS,
        ),
    ]


def section(settings: Settings, services: Services) -> SectionResult:
    workdir = settings.workdir / "dashboard"
    workdir.mkdir()
    count = 4 if settings.quick else 20
    found = measure(workdir, count, 3.0 if settings.quick else 20.0, 3 if settings.quick else 10)
    return SectionResult(rows=rows(found), data=found)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sidecars", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--changes", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        found = measure(Path(folder), args.sidecars, args.seconds, args.changes)
    for row in rows(found):
        print(
            f"{row.measure}: {row.baseline} -> {row.pillion} ({row.comparison}; goal {row.goal}: "
            f"{'met' if row.met else 'MISSED'})"
        )
    print(json.dumps(found))


if __name__ == "__main__":
    main()

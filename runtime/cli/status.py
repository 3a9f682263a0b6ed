"""``pillion status``: the sidecars running on this machine, with what their metrics say.

Each sidecar announces itself while it serves with a small JSON file, ``<run dir>/<pid>.json``
(app id, pid, ports, start time), and removes it when it stops. A sidecar killed with SIGKILL
leaves its file behind; such files are recognised (no process with that pid, or a newer process
that reused it) and removed by the next sidecar that starts and by ``pillion status`` itself.

The run dir is ``$PILLION_RUN_DIR``, else ``$XDG_RUNTIME_DIR/pillion``, else ``~/.pillion/run``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

RUN_DIR_ENV = "PILLION_RUN_DIR"
# psutil derives a start time from the boot time, which /proc gives in whole seconds.
_CLOCK_SLACK = 1.0


def run_dir() -> Path:
    explicit = os.environ.get(RUN_DIR_ENV)
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "pillion"
    return Path.home() / ".pillion" / "run"


@dataclass
class Registration:
    app_id: str
    pid: int
    host: str
    http_port: int
    metrics_port: int | None
    started: float
    version: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Registration:
        return cls(
            app_id=str(data["app_id"]),
            pid=int(data["pid"]),
            host=str(data["host"]),
            http_port=int(data["http_port"]),
            metrics_port=None if data.get("metrics_port") is None else int(data["metrics_port"]),
            started=float(data["started"]),
            version=str(data.get("version", "")),
        )

    def alive(self) -> bool:
        """True while the process that wrote this is running (not another that got its pid)."""
        try:
            created = psutil.Process(self.pid).create_time()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return False
        except psutil.AccessDenied:
            return True
        return created <= self.started + _CLOCK_SLACK


def register(entry: Registration, folder: Path | None = None) -> Path:
    """Write ``entry`` for ``pillion status`` (and clear what dead sidecars left behind)."""
    folder = folder or run_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    running(folder)
    path = folder / f"{entry.pid}.json"
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(asdict(entry)))
    partial.replace(path)  # readers never see a half-written file
    return path


def unregister(path: Path) -> None:
    path.unlink(missing_ok=True)


def running(folder: Path | None = None) -> list[Registration]:
    """The sidecars that are serving; stale and unreadable files are removed on the way."""
    folder = folder or run_dir()
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            entry = Registration.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            continue  # it stopped meanwhile
        except (OSError, ValueError, KeyError, TypeError):
            entry = None
        if entry is None or not entry.alive():
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        found.append(entry)
    return found


# --- the command ---------------------------------------------------------------------------------


@dataclass
class Row:
    app_id: str
    pid: int
    http_port: int
    metrics_port: int | None
    uptime_seconds: float
    sidecar_cpu_seconds: float | None = None
    sidecar_rss_bytes: float | None = None
    app_cpu_seconds: float | None = None
    app_rss_bytes: float | None = None
    requests: float | None = None
    published: float | None = None
    delivered: float | None = None


def scrape(entry: Registration, timeout: float = 2.0) -> Row:
    """The entry with its metrics; a sidecar without metrics, or not answering, shows none."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    row = Row(entry.app_id, entry.pid, entry.http_port, entry.metrics_port, time.time() - entry.started)
    if entry.metrics_port is None:
        return row
    try:
        response = httpx.get(f"http://127.0.0.1:{entry.metrics_port}/metrics", timeout=timeout)
        response.raise_for_status()
    except httpx.HTTPError:
        return row
    totals = {"pillion_http_server_requests_total": 0.0}
    totals |= {"pillion_pubsub_published_total": 0.0, "pillion_pubsub_delivered_total": 0.0}
    per_process: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.labels.get("app_id") != entry.app_id:
                continue  # another sidecar holds the port this one wanted
            if sample.name in totals:
                totals[sample.name] += sample.value
            elif "process" in sample.labels:
                per_process[(sample.name, sample.labels["process"])] = sample.value
    row.requests = totals["pillion_http_server_requests_total"]
    row.published = totals["pillion_pubsub_published_total"]
    row.delivered = totals["pillion_pubsub_delivered_total"]
    row.sidecar_cpu_seconds = per_process.get(("pillion_process_cpu_seconds_total", "sidecar"))
    row.sidecar_rss_bytes = per_process.get(("pillion_process_resident_memory_bytes", "sidecar"))
    row.app_cpu_seconds = per_process.get(("pillion_process_cpu_seconds_total", "app"))
    row.app_rss_bytes = per_process.get(("pillion_process_resident_memory_bytes", "app"))
    return row


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _bytes(value: float | None) -> str:
    return "-" if value is None else f"{value / 1024**2:.1f}MiB"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


COLUMNS = (
    "APP ID",
    "PID",
    "HTTP",
    "METRICS",
    "UPTIME",
    "SIDECAR CPU",
    "SIDECAR RSS",
    "APP CPU",
    "APP RSS",
    "REQUESTS",
    "PUBLISHED",
    "DELIVERED",
)


def table(rows: list[Row]) -> str:
    lines = [list(COLUMNS)]
    for row in rows:
        lines.append(
            [
                row.app_id,
                str(row.pid),
                str(row.http_port),
                "-" if row.metrics_port is None else str(row.metrics_port),
                _duration(row.uptime_seconds),
                _cpu(row.sidecar_cpu_seconds),
                _bytes(row.sidecar_rss_bytes),
                _cpu(row.app_cpu_seconds),
                _bytes(row.app_rss_bytes),
                _count(row.requests),
                _count(row.published),
                _count(row.delivered),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = commands.add_parser("status", help="list the sidecars running on this machine")
    status.add_argument("--json", action="store_true", help="one JSON array instead of a table")


def run(args: argparse.Namespace) -> int:
    rows = [scrape(entry) for entry in running()]
    rows.sort(key=lambda row: (row.app_id, row.pid))
    if args.json:
        print(json.dumps([asdict(row) for row in rows], indent=2))
    elif rows:
        print(table(rows))
    else:
        print(f"no sidecars running (looked in {run_dir()})", file=sys.stderr)
    return 0

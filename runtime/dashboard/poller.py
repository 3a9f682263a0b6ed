"""What the dashboard knows about the sidecars: found in the run-dir registry (as ``pillion
status`` finds them), asked every refresh interval for their metadata, components, health and
metrics, with a few minutes of CPU and memory history kept per sidecar.

A sidecar whose registration is gone (it stopped, or died and its file was cleared) leaves the
snapshot at the next refresh; one that registers joins it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from runtime.cli import status

log = logging.getLogger("pillion.dashboard")
# Minutes of CPU and memory shown in the charts.
HISTORY_SECONDS = 600.0
# A sidecar must answer within this; a slower one shows as not answering until it does.
CALL_TIMEOUT = 2.0
# Refreshes between two requests for the component list (failures happen at start-up).
COMPONENTS_EVERY = 10
_COUNTERS = {
    "pillion_http_server_requests_total": "requests",
    "pillion_pubsub_published_total": "published",
    "pillion_pubsub_delivered_total": "delivered",
    "pillion_pubsub_retried_total": "retried",
    "pillion_pubsub_dead_lettered_total": "deadLettered",
}
_PROCESS = {
    ("pillion_process_cpu_seconds_total", "sidecar"): "sidecarCpu",
    ("pillion_process_cpu_seconds_total", "app"): "appCpu",
    ("pillion_process_resident_memory_bytes", "sidecar"): "sidecarRss",
    ("pillion_process_resident_memory_bytes", "app"): "appRss",
}


@dataclass
class Metrics:
    counters: dict[str, float] = field(default_factory=dict)
    process: dict[str, float] = field(default_factory=dict)
    in_flight: dict[tuple[str, str], float] = field(default_factory=dict)


def parse_metrics(text: str, app_id: str) -> Metrics:
    found = Metrics(counters=dict.fromkeys(_COUNTERS.values(), 0.0))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("app_id") != app_id:
                continue  # another sidecar took the metrics port this one asked for
            counter = _COUNTERS.get(sample.name)
            if counter is not None:
                found.counters[counter] += sample.value
            elif sample.name == "pillion_pubsub_in_flight":
                found.in_flight[(labels.get("pubsub", ""), labels.get("topic", ""))] = sample.value
            else:
                key = _PROCESS.get((sample.name, labels.get("process", "")))
                if key is not None:
                    found.process[key] = sample.value
    return found


@dataclass
class Sample:
    """One point of the charts: [refresh seq, time, sidecar CPU, sidecar RSS, app CPU, app RSS],
    CPU in cores busy since the previous sample (None for the first, or when not measured)."""

    seq: int
    at: float
    process: dict[str, float]
    point: list[Any] = field(default_factory=list)

    def follow(self, previous: Sample | None) -> Sample:
        def rate(name: str) -> float | None:
            if previous is None or self.at <= previous.at:
                return None
            before, now = previous.process.get(name), self.process.get(name)
            return (
                None if before is None or now is None else max(0.0, (now - before) / (self.at - previous.at))
            )

        self.point = [
            self.seq,
            round(self.at, 3),
            rate("sidecarCpu"),
            self.process.get("sidecarRss"),
            rate("appCpu"),
            self.process.get("appRss"),
        ]
        return self


@dataclass
class Watched:
    """One sidecar as last seen, with its history."""

    entry: status.Registration
    samples: deque[Sample]
    view: dict[str, Any] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    components: dict[str, Any] | None = None
    refreshes: int = 0

    @property
    def key(self) -> str:
        return str(self.entry.pid)


def _base_url(entry: status.Registration) -> str:
    host = "127.0.0.1" if entry.host in ("0.0.0.0", "::", "") else entry.host
    return f"http://{'[' + host + ']' if ':' in host else host}:{entry.http_port}"


class Poller:
    def __init__(self, interval: float, token: str | None) -> None:
        self.interval = interval
        self.seq = 0
        self._watched: dict[int, Watched] = {}
        self._changed = asyncio.Condition()
        headers = {"dapr-api-token": token} if token else {}
        self.client = httpx.AsyncClient(headers=headers, timeout=CALL_TIMEOUT)

    async def aclose(self) -> None:
        await self.client.aclose()

    def sidecar_url(self, pid: int) -> str | None:
        watched = self._watched.get(pid)
        return None if watched is None else _base_url(watched.entry)

    # --- polling ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the registry; each sidecar is refreshed by a task of its own, so one that is
        slow to answer never holds up the others."""
        try:
            while True:
                try:
                    await self._follow_registry()
                except Exception:
                    log.exception("reading the sidecar registry failed")
                await asyncio.sleep(self.interval)
        finally:
            tasks = [w.task for w in self._watched.values() if w.task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _follow_registry(self) -> None:
        entries = await asyncio.to_thread(status.running)
        current = {entry.pid: entry for entry in entries}
        gone = [
            pid
            for pid, watched in self._watched.items()
            if pid not in current or current[pid].started != watched.entry.started
        ]
        for pid in gone:
            watched = self._watched.pop(pid)
            if watched.task is not None:
                watched.task.cancel()
        history = max(2, int(HISTORY_SECONDS / self.interval) + 1)
        for pid, entry in current.items():
            if pid not in self._watched:
                watched = Watched(entry, deque(maxlen=history))
                watched.task = asyncio.create_task(self._follow(watched))
                self._watched[pid] = watched
        if gone:
            await self._changed_now()

    async def _follow(self, watched: Watched) -> None:
        while True:
            started = time.monotonic()
            try:
                await self._refresh(watched)
            except Exception:
                log.exception(
                    "refreshing sidecar %s (pid %d) failed", watched.entry.app_id, watched.entry.pid
                )
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def _changed_now(self) -> None:
        self.seq += 1
        async with self._changed:
            self._changed.notify_all()

    async def _get(self, url: str) -> httpx.Response | None:
        try:
            return await self.client.get(url)
        except httpx.HTTPError:
            return None

    async def _refresh(self, watched: Watched) -> None:
        entry = watched.entry
        base = _base_url(entry)
        calls = [self._get(f"{base}/v1.0/metadata"), self._get(f"{base}/v1.0/healthz")]
        if entry.metrics_port is not None:
            calls.append(self._get(f"http://127.0.0.1:{entry.metrics_port}/metrics"))
        # Failed components are known once the sidecar serves, so they are asked for now and then.
        ask_components = watched.refreshes % COMPONENTS_EVERY == 0 or watched.components is None
        if ask_components:
            calls.append(self._get(f"{base}/v1.0-alpha1/pillion/components"))
        answers = await asyncio.gather(*calls)
        watched.refreshes += 1
        metadata_answer, health_answer = answers[:2]
        metrics_answer = answers[2] if entry.metrics_port is not None else None
        if ask_components:
            watched.components = _json(answers[-1])
        metadata = _json(metadata_answer)
        metrics = Metrics()
        if metrics_answer is not None and metrics_answer.status_code == 200:
            try:
                metrics = parse_metrics(metrics_answer.text, entry.app_id)
            except ValueError:
                log.warning("sidecar %s (pid %d) served metrics that do not parse", entry.app_id, entry.pid)
        if watched.task is None or self._watched.get(entry.pid) is not watched:
            return  # it left the registry meanwhile
        if metrics.process:
            previous = watched.samples[-1] if watched.samples else None
            watched.samples.append(Sample(self.seq + 1, time.time(), metrics.process).follow(previous))
        watched.view = self._view(watched, metadata, watched.components, health_answer, metrics)
        await self._changed_now()

    def _view(
        self,
        watched: Watched,
        metadata: dict[str, Any] | None,
        components: dict[str, Any] | None,
        health: httpx.Response | None,
        metrics: Metrics,
    ) -> dict[str, Any]:
        entry = watched.entry
        if health is None:
            shown_health = "not answering"
        elif health.status_code == 204:
            shown_health = "ready"
        elif health.status_code == 401:
            shown_health = "API token refused"
        else:
            shown_health = str(
                (_json(health, any_status=True) or {}).get("message") or f"HTTP {health.status_code}"
            )
        metadata = metadata or {}
        app = metadata.get("appConnectionProperties") or {}
        subscriptions = []
        for subscription in metadata.get("subscriptions") or []:
            key = (subscription.get("pubsubname", ""), subscription.get("topic", ""))
            in_flight = metrics.in_flight.get(key)
            subscriptions.append({**subscription, "inFlight": None if in_flight is None else int(in_flight)})
        listed = (components or {}).get("components")
        if listed is None:
            # An older sidecar, or the admin API switched off: what metadata says is loaded.
            listed = [{**c, "status": "loaded"} for c in metadata.get("components") or []]
        return {
            "key": watched.key,
            "appId": entry.app_id,
            "pid": entry.pid,
            "httpPort": entry.http_port,
            "metricsPort": entry.metrics_port,
            "appPort": app.get("port"),
            "started": entry.started,
            "version": entry.version,
            "health": shown_health,
            "appHealth": (metadata.get("extended") or {}).get("appHealth"),
            **{name: metrics.counters.get(name) for name in _COUNTERS.values()},
            "components": listed,
            "subscriptions": subscriptions,
        }

    # --- reading ------------------------------------------------------------------------------

    async def wait_after(self, seq: int, seconds: float) -> None:
        """Return once a refresh newer than ``seq`` is done, or after ``seconds``."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(lambda: self.seq > seq), seconds)

    def snapshot(self, since: int) -> dict[str, Any]:
        """Every sidecar's view; the CPU and memory samples newer than refresh ``since``."""
        apps = []
        for watched in sorted(self._watched.values(), key=lambda w: (w.entry.app_id, w.entry.pid)):
            if not watched.view:
                continue
            points = [s.point for s in watched.samples if s.seq > since]
            apps.append({**watched.view, "samples": points})
        return {"seq": self.seq, "time": time.time(), "interval": self.interval, "apps": apps}


def _json(response: httpx.Response | None, any_status: bool = False) -> dict[str, Any] | None:
    if response is None or (response.status_code != 200 and not any_status):
        return None
    try:
        value = response.json()
    except ValueError:
        return None
    return value if isinstance(value, dict) else None

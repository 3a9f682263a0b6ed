"""CPU, memory, open files and threads of the sidecar and of the app's whole process tree.

A Prometheus collector that reads psutil when scraped and at no other time: the monitor has no
timer of its own, so its whole cost is one walk of ``/proc`` per scrape (a few milliseconds, far
below 1% of a core at any usual scrape interval).

Series, each labelled ``app_id`` and ``process="sidecar"`` or ``process="app"``:

* ``pillion_process_cpu_seconds_total``: user + system CPU time;
* ``pillion_process_resident_memory_bytes``: resident set size;
* ``pillion_process_open_fds``: open file descriptors;
* ``pillion_process_threads``: OS threads;
* ``pillion_process_count``: processes measured (the app's tree may hold many);
* ``pillion_process_start_time_seconds``: when the (root) process started, Unix time.

``app`` is the process with the app's pid and all its descendants, summed: an app that is a
shell script, a process manager or a worker pool is measured whole. Its CPU time includes
descendants that have already exited and been waited for, so the counter does not fall back
when a worker is replaced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("pillion.metrics")
_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied)


@dataclass
class Usage:
    cpu_seconds: float = 0.0
    rss_bytes: int = 0
    open_fds: int = 0
    threads: int = 0
    processes: int = 0
    start_time: float = 0.0

    def add(self, process: psutil.Process, with_reaped_children: bool) -> None:
        """Add one process; one that vanished or cannot be read meanwhile adds nothing."""
        try:
            with process.oneshot():
                times = process.cpu_times()
                cpu = times.user + times.system
                if with_reaped_children:
                    cpu += times.children_user + times.children_system
                rss = process.memory_info().rss
                threads = process.num_threads()
                fds = process.num_fds()
        except _GONE:
            return
        self.cpu_seconds += cpu
        self.rss_bytes += rss
        self.threads += threads
        self.open_fds += fds
        self.processes += 1


def measure_tree(root: psutil.Process) -> Usage:
    usage = Usage(start_time=root.create_time())
    try:
        descendants = root.children(recursive=True)
    except _GONE:
        descendants = []
    for process in (root, *descendants):
        usage.add(process, with_reaped_children=True)
    return usage


class ResourceMonitor(Collector):
    """Collects on scrape. ``app_pid`` is asked each time, as the app may start, stop or be named
    late (``pillion run`` starts it after the sidecar; other launchers PUT ``appPID`` metadata)."""

    def __init__(self, app_id: str, app_pid: Callable[[], int | None]) -> None:
        self.app_id = app_id
        self.app_pid = app_pid
        self._sidecar = psutil.Process()
        self._app: psutil.Process | None = None

    def _app_process(self) -> psutil.Process | None:
        pid = self.app_pid()
        if pid is None or pid <= 0:
            return None
        cached = self._app
        # is_running also notices a pid reused by an unrelated process.
        if cached is not None and cached.pid == pid and cached.is_running():
            return cached
        try:
            self._app = psutil.Process(pid)
        except _GONE:
            self._app = None
        return self._app

    def measure(self) -> dict[str, Usage]:
        sidecar = Usage(start_time=self._sidecar.create_time())
        # Not its children's time: under `pillion run` the app is a child of this process.
        sidecar.add(self._sidecar, with_reaped_children=False)
        measured = {"sidecar": sidecar}
        app = self._app_process()
        if app is not None:
            usage = measure_tree(app)
            if usage.processes:
                measured["app"] = usage
        return measured

    def describe(self) -> Iterable[Metric]:
        return self._families({})

    def collect(self) -> Iterable[Metric]:
        try:
            measured = self.measure()
        except Exception:
            log.exception("reading process resources failed")
            measured = {}
        return self._families(measured)

    def _families(self, measured: dict[str, Usage]) -> list[Metric]:
        labels = ["app_id", "process"]
        cpu = CounterMetricFamily("pillion_process_cpu_seconds", "User and system CPU time.", labels=labels)
        rss = GaugeMetricFamily("pillion_process_resident_memory_bytes", "Resident memory.", labels=labels)
        fds = GaugeMetricFamily("pillion_process_open_fds", "Open file descriptors.", labels=labels)
        threads = GaugeMetricFamily("pillion_process_threads", "OS threads.", labels=labels)
        count = GaugeMetricFamily("pillion_process_count", "Processes measured.", labels=labels)
        started = GaugeMetricFamily(
            "pillion_process_start_time_seconds", "Start of the (root) process, Unix time.", labels=labels
        )
        for process, usage in measured.items():
            values = [self.app_id, process]
            cpu.add_metric(values, usage.cpu_seconds)
            rss.add_metric(values, usage.rss_bytes)
            fds.add_metric(values, usage.open_fds)
            threads.add_metric(values, usage.threads)
            count.add_metric(values, usage.processes)
            started.add_metric(values, usage.start_time)
        return [cpu, rss, fds, threads, count, started]

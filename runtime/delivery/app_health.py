"""App health checks (``--enable-app-health-check``): probe the app, and hold deliveries while it fails.

The sidecar sends ``GET <app><path>`` every ``interval`` (without the app token, as daprd does;
a gRPC app is asked ``AppCallbackHealthCheck/HealthCheck`` instead). Any 2xx (OK) within
``timeout`` is a success. The app starts out unhealthy: nothing is delivered until a probe has
succeeded. ``threshold`` failures in a row make it unhealthy again; one success makes it healthy.
The app channels consult :attr:`AppHealth.healthy` before every delivery and treat an unhealthy
app like a closed port: the delivery waits, no try is used up, and the message stays with the
broker.

This module imports no HTTP client: the probe itself is the channel's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from components import gotime

log = logging.getLogger("pillion.app")

# A probe answers None when the app is healthy, else what was wrong (for the log).
Probe = Callable[[str, float], Awaitable[str | None]]


@dataclass(frozen=True)
class HealthCheck:
    """The flags, with daprd's names and defaults."""

    path: str = "/healthz"
    interval: float = 5.0
    timeout: float = 0.5
    threshold: int = 3

    def describe(self) -> dict[str, Any]:
        """``appConnectionProperties.health`` in ``GET /v1.0/metadata``."""
        return {
            "healthCheckPath": self.path,
            "healthProbeInterval": gotime.duration(self.interval),
            "healthProbeTimeout": gotime.duration(self.timeout),
            "healthThreshold": self.threshold,
        }


class AppHealth:
    def __init__(self, check: HealthCheck, probe: Probe) -> None:
        self.check = check
        self._probe = probe
        # Failed probes in a row; the app is unhealthy until a probe succeeds.
        self._failures = 0
        self._healthy = asyncio.Event()
        self._wake = asyncio.Event()

    @property
    def healthy(self) -> bool:
        return self._healthy.is_set()

    @property
    def status(self) -> str:
        return "healthy" if self.healthy else "unhealthy"

    async def wait_healthy(self) -> None:
        await self._healthy.wait()

    def probe_now(self) -> None:
        """Probe at once rather than at the next interval (the app's port just opened)."""
        self._wake.set()

    async def run(self) -> None:
        """Probe every ``interval`` until cancelled."""
        loop = asyncio.get_running_loop()
        check = self.check
        log.info(
            "app health checks: GET %s every %s (timeout %s, unhealthy after %d failures in a row)",
            check.path,
            gotime.duration(check.interval),
            gotime.duration(check.timeout),
            check.threshold,
        )
        while True:
            started = loop.time()
            self._wake.clear()
            self.record(await self._probe(check.path, check.timeout))
            pause = max(0.0, check.interval - (loop.time() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), pause)

    def record(self, problem: str | None) -> None:
        """One probe's result; logs and flips the state when the app changes health."""
        path, threshold = self.check.path, self.check.threshold
        if problem is None:
            if not self.healthy:
                log.info("app is healthy (GET %s succeeded); deliveries go on", path)
                self._healthy.set()
            self._failures = 0
            return
        self._failures += 1
        if self._failures < threshold:
            log.debug("app health probe failed (%d of %d): %s", self._failures, threshold, problem)
        elif self._failures == threshold and self.healthy:
            log.warning(
                "app is unhealthy: %s (%d failed probes in a row); deliveries pause until it recovers",
                problem,
                threshold,
            )
            self._healthy.clear()
        elif self._failures == threshold:
            log.warning(
                "app is not healthy yet: %s (%d failed probes in a row); deliveries wait for it",
                problem,
                threshold,
            )


class AppHealthCollector(Collector):
    """``pillion_app_healthy``: 1 while the app passes its health checks, else 0; read on scrape."""

    def __init__(self, app_id: str, health: AppHealth) -> None:
        self.app_id = app_id
        self.health = health

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        family.add_metric([self.app_id], 1.0 if self.health.healthy else 0.0)
        return [family]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "pillion_app_healthy",
            "1 while the app passes its health checks (--enable-app-health-check), else 0.",
            labels=["app_id"],
        )

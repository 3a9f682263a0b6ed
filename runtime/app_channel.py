"""The HTTP channel from the sidecar to the app: subscription discovery and event delivery.

One pooled httpx client per sidecar. Every request but the health probe carries
``dapr-api-token`` when ``APP_API_TOKEN`` is set (reference section 6.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass

import httpx

from runtime.app_health import AppHealth, HealthCheck

log = logging.getLogger("pillion.app")
# httpx logs every request at INFO: one line per delivered message is noise, not news.
logging.getLogger("httpx").setLevel(logging.WARNING)
_DISCOVERY_TRIES = 3
_PROBE_INTERVAL = 0.1


class AppUnreachable(Exception):
    """The app's port refused the connection: nothing was delivered."""


class AppCallFailed(Exception):
    """The call reached the app but no answer came back (timeout, reset connection, ...)."""


@dataclass(frozen=True, slots=True)
class AppReply:
    status: int
    body: bytes


class AppChannel:
    def __init__(self, address: str, port: int, app_id: str, health_check: HealthCheck | None = None) -> None:
        host = f"[{address}]" if ":" in address else address
        self.address, self.port, self.app_id = address, port, app_id
        self._token = os.environ.get("APP_API_TOKEN", "")
        self._client = httpx.AsyncClient(
            base_url=f"http://{host}:{port}",
            timeout=None,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )
        self._probe: asyncio.Task[None] | None = None
        # With --enable-app-health-check: deliveries go only while the probes say healthy.
        self.health = AppHealth(health_check, self.check_health) if health_check is not None else None

    def _headers(self, headers: dict[str, bytes]) -> list[tuple[bytes, bytes]]:
        if self._token:
            headers["dapr-api-token"] = self._token.encode()
        return [(name.encode("latin-1"), value) for name, value in headers.items()]

    async def subscriptions(self) -> AppReply:
        """``GET /dapr/subscribe``, tried 3 times with backoff from 500 ms as daprd does."""
        headers = self._headers({"content-type": b"application/json", "dapr-app-id": self.app_id.encode()})
        for attempt in range(_DISCOVERY_TRIES):
            try:
                response = await self._client.get("/dapr/subscribe", headers=headers, timeout=10)
                return AppReply(response.status_code, response.content)
            except httpx.TransportError as exc:
                if attempt == _DISCOVERY_TRIES - 1:
                    raise AppCallFailed(f"GET /dapr/subscribe failed: {exc!r}") from None
                await asyncio.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    async def post(
        self, path: str, body: bytes, headers: dict[str, bytes], time_limit: float | None
    ) -> AppReply:
        """POST an event, waiting at most ``time_limit`` seconds (None: no limit) for the answer.

        ``AppUnreachable`` when the port is closed or the app is unhealthy (nothing was sent),
        ``AppCallFailed`` on other transport errors.
        """
        if self.health is not None and not self.health.healthy:
            raise AppUnreachable("the app is unhealthy")
        try:
            response = await self._client.post(
                path, content=body, headers=self._headers(headers), timeout=time_limit
            )
        except httpx.ConnectError as exc:
            raise AppUnreachable(str(exc)) from None
        except httpx.TransportError as exc:
            raise AppCallFailed(repr(exc)) from None
        return AppReply(response.status_code, response.content)

    async def wait_reachable(self) -> None:
        """Return once the app's port accepts connections (one probe shared by every waiter) and,
        with health checks, once the app is healthy."""
        health = self.health
        if health is None or health.healthy:
            if self._probe is None or self._probe.done():
                self._probe = asyncio.create_task(self._probe_port())
            await asyncio.shield(self._probe)
        if health is not None:
            await health.wait_healthy()

    async def check_health(self, path: str, time_limit: float) -> str | None:
        """One health probe: None when ``GET path`` answers 2xx within ``time_limit`` seconds, else
        the problem. Sent without the app token (reference section 6.2)."""
        try:
            async with asyncio.timeout(time_limit):
                response = await self._client.get(path)
        except TimeoutError:
            return f"GET {path} did not answer within {time_limit:g}s"
        except httpx.TransportError as exc:
            return f"GET {path} failed: {exc!r}"
        if 200 <= response.status_code <= 299:
            return None
        return f"GET {path} answered {response.status_code}"

    async def _probe_port(self) -> None:
        log.warning("app is not reachable on %s:%d; deliveries wait for it", self.address, self.port)
        while True:
            try:
                _, writer = await asyncio.open_connection(self.address, self.port)
            except OSError:
                await asyncio.sleep(_PROBE_INTERVAL)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            log.info("app is reachable again on %s:%d", self.address, self.port)
            return

    async def aclose(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        await self._client.aclose()

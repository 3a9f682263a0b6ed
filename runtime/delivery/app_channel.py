"""The HTTP channel from the sidecar to the app: subscription discovery and event delivery
(an :class:`runtime.delivery.event_sink.AppConnection`).

Deliveries go over runtime.delivery.app_post's kept-alive connections; subscription discovery, health
probes and binding questions over one pooled aiohttp session. Every request but the health probe
carries ``dapr-api-token`` when ``APP_API_TOKEN`` is set (as daprd:
https://docs.dapr.io/operations/security/app-api-token/).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass

import aiohttp
from yarl import URL

from runtime.delivery.app_health import AppHealth, HealthCheck
from runtime.delivery.app_post import AppCallError, AppConnectionRefused, AppPoster
from runtime.delivery.event_sink import (
    Answer,
    AppCallFailed,
    AppUnreachable,
    Envelope,
    Outcome,
    wait_for_port,
)
from runtime.delivery.subscriptions import Subscription, from_app

log = logging.getLogger("pillion.app")
_DISCOVERY_TRIES = 3


@dataclass(frozen=True, slots=True)
class AppReply:
    status: int
    body: bytes


def read_reply(status: int, body: bytes) -> tuple[Outcome, str]:
    """What an HTTP app's answer means (the table in docs/pubsub.md: Delivery), with a reason for the log."""
    if 200 <= status <= 299:
        try:
            answer = json.loads(body) if body.strip() else None
        except ValueError:
            return Outcome.SUCCESS, ""
        if not isinstance(answer, dict):
            return Outcome.SUCCESS, ""
        value = next((v for k, v in answer.items() if k.lower() == "status"), None)
        if value is None or value in ("", "SUCCESS") or not isinstance(value, str):
            return Outcome.SUCCESS, ""
        if value == "RETRY":
            return Outcome.RETRY, "the app answered RETRY"
        if value == "DROP":
            return Outcome.DROP, "the app answered DROP"
        return Outcome.RETRY, f"the app answered an unknown status {value!r}"
    text = body[:200].decode("utf-8", errors="replace")
    if status == 404:
        return Outcome.DROP, f"the app answered 404 (non-retriable): {text}"
    return Outcome.RETRY, f"the app answered {status}: {text}"


class AppChannel:
    def __init__(self, address: str, port: int, app_id: str, health_check: HealthCheck | None = None) -> None:
        host = f"[{address}]" if ":" in address else address
        self.address, self.port, self.app_id = address, port, app_id
        self._token = os.environ.get("APP_API_TOKEN", "")
        self._base = f"http://{host}:{port}"
        self._session: aiohttp.ClientSession | None = None
        # Deliveries, the per-message calls, bypass aiohttp (see runtime.delivery.app_post).
        self._poster = AppPoster(address, port)
        self._probe: asyncio.Task[None] | None = None
        # With --enable-app-health-check: deliveries go only while the probes say healthy.
        self.health = AppHealth(health_check, self.check_health) if health_check is not None else None

    def _headers(self, headers: dict[str, bytes]) -> dict[str, str]:
        if self._token:
            headers["dapr-api-token"] = self._token.encode()
        return {name: value.decode("latin-1") for name, value in headers.items()}

    def _url(self, path: str) -> URL:
        # The route is sent as the app declared it: no re-quoting of what is already escaped.
        return URL(self._base + path, encoded=True)

    @property
    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # created lazily: a session must be made inside the event loop
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
                timeout=aiohttp.ClientTimeout(total=None),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def _call(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None,
        body: bytes | None,
        time_limit: float | None,
    ) -> AppReply:
        timeout = aiohttp.ClientTimeout(total=time_limit)
        async with self._client.request(
            method, self._url(path), data=body, headers=headers, timeout=timeout
        ) as response:
            return AppReply(response.status, await response.read())

    async def programmatic_subscriptions(self) -> list[Subscription]:
        """The app's own subscriptions; ``AppCallFailed`` when it could not be asked,
        ``SubscriptionError`` when its answer cannot be used."""
        reply = await self.subscriptions()
        if reply.status == 200:
            return from_app(reply.body)
        if reply.status == 404:
            log.debug("user app did not subscribe to any topic")
        else:
            log.error("app returned http status code %d from subscription endpoint", reply.status)
        return []

    async def deliver(self, envelope: Envelope, time_limit: float | None) -> Answer:
        path = envelope.path if envelope.path.startswith("/") else "/" + envelope.path
        reply = await self.post(path, envelope.body, envelope.headers, time_limit)
        outcome, reason = read_reply(reply.status, reply.body)
        return Answer(outcome, reply.status, reason)

    async def subscriptions(self) -> AppReply:
        """``GET /dapr/subscribe``, tried 3 times with backoff from 500 ms as daprd does."""
        headers = self._headers({"content-type": b"application/json", "dapr-app-id": self.app_id.encode()})
        for attempt in range(_DISCOVERY_TRIES):
            try:
                return await self._call("GET", "/dapr/subscribe", headers, None, 10)
            except (aiohttp.ClientError, TimeoutError) as exc:
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
        if self._token:
            headers["dapr-api-token"] = self._token.encode()
        try:
            status, answer = await self._poster.post(path, body, headers, time_limit)
        except AppConnectionRefused as exc:
            raise AppUnreachable(str(exc)) from None
        except (AppCallError, TimeoutError, OSError) as exc:
            raise AppCallFailed(repr(exc)) from None
        return AppReply(status, answer)

    async def options(self, path: str, time_limit: float) -> AppReply:
        """``OPTIONS path``, daprd's question whether the app takes an input binding's events."""
        headers = self._headers({"content-type": b"application/json"})
        return await self._call("OPTIONS", path, headers, None, time_limit)

    async def wait_reachable(self) -> None:
        """Return once the app's port accepts connections (one probe shared by every waiter) and,
        with health checks, once the app is healthy."""
        health = self.health
        if health is None or health.healthy:
            if self._probe is None or self._probe.done():
                self._probe = asyncio.create_task(wait_for_port(self.address, self.port))
            await asyncio.shield(self._probe)
        if health is not None:
            await health.wait_healthy()

    async def check_health(self, path: str, time_limit: float) -> str | None:
        """One health probe: None when ``GET path`` answers 2xx within ``time_limit`` seconds, else
        the problem. Sent without the app token, as daprd does."""
        try:
            reply = await self._call("GET", path, None, None, time_limit)
        except TimeoutError:
            return f"GET {path} did not answer within {time_limit:g}s"
        except aiohttp.ClientError as exc:
            return f"GET {path} failed: {exc!r}"
        if 200 <= reply.status <= 299:
            return None
        return f"GET {path} answered {reply.status}"

    async def aclose(self) -> None:
        self._poster.close()
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

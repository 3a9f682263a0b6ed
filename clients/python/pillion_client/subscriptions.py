"""The app side of pub/sub for Starlette and other ASGI apps (needs ``pillion-client[starlette]``).

:class:`Subscriptions` answers the sidecar's ``GET /dapr/subscribe`` and hands every delivery to
its handler. Add its ``routes`` to a Starlette app, or serve or mount the object itself: it is an
ASGI app.
"""

from __future__ import annotations

import base64
import enum
import hmac
import inspect
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, Router
from starlette.types import Receive, Scope, Send

log = logging.getLogger("pillion_client.subscriptions")


class Status(enum.StrEnum):
    SUCCESS = "SUCCESS"
    RETRY = "RETRY"
    DROP = "DROP"


@dataclass(frozen=True, slots=True)
class TopicEvent:
    """One delivery. ``data`` is the CloudEvent's data, or the decoded bytes of ``data_base64``
    (raw payloads)."""

    id: str
    source: str
    type: str
    topic: str
    pubsub_name: str
    data_content_type: str
    data: Any
    cloud_event: dict[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


Result = Status | None
Handler = Callable[[TopicEvent], Awaitable[Result]] | Callable[[TopicEvent], Result]
H = TypeVar("H", bound=Handler)

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class _Topic:
    pubsub: str
    topic: str
    rules: list[dict[str, str]] = field(default_factory=list)
    default: str | None = None
    dead_letter_topic: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def wire(self) -> dict[str, Any]:
        routes: dict[str, Any] = {"rules": list(self.rules)}
        if self.default:
            routes["default"] = self.default
        wire: dict[str, Any] = {"pubsubname": self.pubsub, "topic": self.topic, "routes": routes}
        if self.dead_letter_topic:
            wire["deadLetterTopic"] = self.dead_letter_topic
        if self.metadata:
            wire["metadata"] = dict(self.metadata)
        return wire


def _event(cloud_event: dict[str, Any], headers: Mapping[str, str]) -> TopicEvent:
    data = cloud_event.get("data")
    if "data_base64" in cloud_event:
        data = base64.b64decode(cloud_event["data_base64"])
    return TopicEvent(
        id=str(cloud_event.get("id", "")),
        source=str(cloud_event.get("source", "")),
        type=str(cloud_event.get("type", "")),
        topic=str(cloud_event.get("topic", "")),
        pubsub_name=str(cloud_event.get("pubsubname", "")),
        data_content_type=str(cloud_event.get("datacontenttype", "")),
        data=data,
        cloud_event=cloud_event,
        headers=headers,
    )


class Subscriptions:
    """Handlers return a :class:`Status` (None means SUCCESS; an exception means RETRY). They may
    be coroutines or plain functions (run in a worker thread).

    ``app_api_token`` (default: APP_API_TOKEN) is required as ``dapr-api-token`` when set.
    """

    def __init__(self, *, app_api_token: str | None = None) -> None:
        token = app_api_token if app_api_token is not None else os.environ.get("APP_API_TOKEN", "")
        self._token = token.encode()
        self._topics: dict[tuple[str, str], _Topic] = {}
        self._handlers: dict[str, Handler] = {}
        self._router: Router | None = None

    def subscribe(
        self,
        pubsub: str,
        topic: str,
        *,
        route: str | None = None,
        match: str | None = None,
        dead_letter_topic: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Callable[[H], H]:
        """Decorator form of :meth:`add`."""

        def register(handler: H) -> H:
            self.add(
                pubsub,
                topic,
                handler,
                route=route,
                match=match,
                dead_letter_topic=dead_letter_topic,
                metadata=metadata,
            )
            return handler

        return register

    def add(
        self,
        pubsub: str,
        topic: str,
        handler: Handler,
        *,
        route: str | None = None,
        match: str | None = None,
        dead_letter_topic: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Deliver ``topic`` on ``pubsub`` to ``handler``. With ``match`` (a CEL expression over
        ``event``) only the events it matches; several handlers of one topic are tried in the order
        they were added, and the one without ``match`` gets the rest."""
        if self._router is not None:
            raise RuntimeError("subscribe before the routes are served: the sidecar reads them once")
        path = (
            route
            or f"/dapr/events/{_UNSAFE.sub('_', pubsub)}/{_UNSAFE.sub('_', topic)}/{len(self._handlers)}"
        )
        if path in self._handlers:
            raise ValueError(f"route {path} is already subscribed")
        entry = self._topics.setdefault((pubsub, topic), _Topic(pubsub, topic))
        if match:
            entry.rules.append({"match": match, "path": path})
        elif entry.default is not None:
            raise ValueError(f"{pubsub}/{topic} already has a handler without a match")
        else:
            entry.default = path
        if dead_letter_topic:
            entry.dead_letter_topic = dead_letter_topic
        entry.metadata.update(metadata or {})
        self._handlers[path] = handler

    def subscriptions(self) -> list[dict[str, Any]]:
        """The body of ``GET /dapr/subscribe``."""
        return [entry.wire() for entry in self._topics.values()]

    @property
    def routes(self) -> list[BaseRoute]:
        discovery: list[BaseRoute] = [Route("/dapr/subscribe", self._discovery, methods=["GET"])]
        return discovery + [Route(path, self._delivery, methods=["POST"]) for path in self._handlers]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._router is None:
            self._router = Router(routes=self.routes)
        await self._router(scope, receive, send)

    def _refused(self, request: Request) -> Response | None:
        if self._token and not hmac.compare_digest(
            request.headers.get("dapr-api-token", "").encode(), self._token
        ):
            return JSONResponse({"message": "invalid app api token"}, 401)
        return None

    async def _discovery(self, request: Request) -> Response:
        return self._refused(request) or JSONResponse(self.subscriptions())

    async def _delivery(self, request: Request) -> Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        handler = self._handlers[request.url.path]
        try:
            cloud_event = json.loads(await request.body())
            if not isinstance(cloud_event, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            # Redelivering bytes that are not a CloudEvent cannot help.
            log.error("dropping a delivery to %s: %s", request.url.path, exc)
            return JSONResponse({"status": Status.DROP})
        event = _event(cloud_event, request.headers)
        try:
            if inspect.iscoroutinefunction(handler):
                result = await handler(event)
            else:
                result = await run_in_threadpool(handler, event)
            status = Status(result) if result is not None else Status.SUCCESS
        except Exception:
            log.exception("handler for %s/%s failed; asking for a retry", event.pubsub_name, event.topic)
            status = Status.RETRY
        return JSONResponse({"status": status})

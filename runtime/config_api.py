"""The configuration API building block: read items, and push changes of subscribed keys to the
app as daprd pushes them.

(``runtime/configuration.py`` is the Configuration *resource*, ``--config``; this is the API over
``configuration.*`` components.) A subscription's changes reach the app one at a time, in order:
for each key of a change, ``POST /configuration/<store>/<key>`` with the whole change as body
``{"id": <subscription>, "items": {...}}``; only a 200 answer counts as delivered, anything else is
logged (no retry, as daprd without a resiliency policy).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from components.configuration.base import ConfigurationItem, ConfigurationStore, Watch
from runtime.errors import APIError

if TYPE_CHECKING:
    from runtime.app_channel import AppChannel
    from runtime.resources import ComponentResource

log = logging.getLogger("pillion.configuration")
DELIVERY_TIMEOUT = 60.0


@dataclass(slots=True)
class _Subscription:
    store: str
    watch: Watch


def _go_list(keys: list[str]) -> str:
    # daprd formats the key list with Go's %s: [a b]
    return "[" + " ".join(keys) + "]"


class UnsubscribeError(Exception):
    """Unsubscribing failed; the HTTP answer is a bare ``{"message"}``."""


class ConfigurationAPIBlock:
    def __init__(self, app_id: str, channel: Callable[[], AppChannel] | None) -> None:
        self._app_id = app_id
        # None without --app-port: subscribing is refused, as daprd refuses it without an app channel.
        self._channel = channel
        self._stores: dict[str, ConfigurationStore] = {}
        self._subscriptions: dict[str, _Subscription] = {}
        self._closing: set[asyncio.Task[None]] = set()

    # --- the sidecar's side (runtime.blocks.PluggableBlock) -----------------------------------

    def entry(
        self, resource: ComponentResource, instance: Any, metadata: dict[str, Any]
    ) -> ConfigurationStore:
        store: ConfigurationStore = instance
        return store

    def put(self, name: str, entry: ConfigurationStore) -> None:
        if name in self._stores:
            self._drop(name, "its component changed")
        self._stores[name] = entry

    def remove(self, name: str) -> None:
        self._stores.pop(name, None)
        self._drop(name, "its component was removed")

    async def app_ready(self, channel: AppChannel | None) -> None:
        return None

    async def stop(self) -> None:
        subscriptions, self._subscriptions = list(self._subscriptions.values()), {}
        await asyncio.gather(
            *(s.watch.close() for s in subscriptions), *self._closing, return_exceptions=True
        )

    def _drop(self, store: str, why: str) -> None:
        for sub_id, subscription in list(self._subscriptions.items()):
            if subscription.store == store:
                del self._subscriptions[sub_id]
                log.info("configuration subscription %s on %s ended: %s", sub_id, store, why)
                task = asyncio.create_task(subscription.watch.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    # --- the API ------------------------------------------------------------------------------

    def _find(self, store: str) -> ConfigurationStore:
        if not self._stores:
            raise APIError(
                500, "ERR_CONFIGURATION_STORE_NOT_CONFIGURED", "configuration stores not configured"
            )
        found = self._stores.get(store)
        if found is None:
            raise APIError(400, "ERR_CONFIGURATION_STORE_NOT_FOUND", f"configuration store {store} not found")
        return found

    async def get(
        self, store: str, keys: list[str], metadata: dict[str, str]
    ) -> dict[str, ConfigurationItem]:
        component = self._find(store)
        try:
            return await component.get(keys, metadata)
        except Exception as exc:
            log.warning("configuration store %s: get failed: %s", store, exc)
            message = f"failed to get {_go_list(keys)} from Configuration store {store}: {exc}"
            raise APIError(500, "ERR_CONFIGURATION_GET", message) from None

    async def subscribe(self, store: str, keys: list[str], metadata: dict[str, str]) -> str:
        component = self._find(store)
        if self._channel is None:
            raise APIError(
                500,
                "ERR_APP_CHANNEL_NIL",
                "app channel is not initialized. cannot subscribe to configuration updates",
            )
        channel = self._channel()
        sub_id = str(uuid.uuid4())

        async def push(items: dict[str, ConfigurationItem]) -> None:
            await self._push(channel, store, sub_id, items)

        try:
            watch = await component.subscribe(keys, metadata, push)
        except Exception as exc:
            log.warning("configuration store %s: subscribe failed: %s", store, exc)
            message = f"failed to subscribe {_go_list(keys)} from Configuration store {store}: {exc}"
            raise APIError(500, "ERR_CONFIGURATION_SUBSCRIBE", message) from None
        self._subscriptions[sub_id] = _Subscription(store, watch)
        return sub_id

    async def unsubscribe(self, store: str, sub_id: str) -> None:
        self._find(store)
        subscription = self._subscriptions.get(sub_id)
        if subscription is None or subscription.store != store:
            raise UnsubscribeError(
                f"failed to unsubscribe to configuration request {sub_id}: "
                f"subscription with id {sub_id} does not exist"
            )
        del self._subscriptions[sub_id]
        await subscription.watch.close()

    @staticmethod
    async def _push(
        channel: AppChannel, store: str, sub_id: str, items: dict[str, ConfigurationItem]
    ) -> None:
        event = {"id": sub_id, "items": {key: item.to_json() for key, item in items.items()}}
        body = (json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        for key in items:
            path = f"/configuration/{store}/{key}"
            try:
                reply = await channel.post(
                    path, body, {"content-type": b"application/json"}, DELIVERY_TIMEOUT
                )
            except Exception as exc:
                log.error("error sending configuration item to the app: %s", exc)
                continue
            if reply.status != 200:
                log.error(
                    "error sending configuration item to the app: error sending configuration item to "
                    "application, status %d",
                    reply.status,
                )

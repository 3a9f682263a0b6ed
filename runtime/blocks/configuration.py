"""The configuration API building block: read items, and push changes of subscribed keys to the
app as daprd pushes them.

(``runtime/resources/configuration.py`` is the Configuration *resource*, ``--config``; this is the API over
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
from typing import TYPE_CHECKING, ClassVar, cast

from components.configuration.base import ConfigurationItem, ConfigurationStore, Watch
from runtime import errors
from runtime.blocks.base import BlockContext, LoadedComponent

if TYPE_CHECKING:
    from runtime.delivery.app_channel import AppChannel

log = logging.getLogger("pillion.configuration")
DELIVERY_TIMEOUT = 60.0


@dataclass(slots=True)
class _Subscription:
    store: str
    watch: Watch


class UnsubscribeError(Exception):
    """Unsubscribing failed; the HTTP answer is a bare ``{"message"}``."""


class ConfigurationAPIBlock:
    kind: ClassVar[str] = "configuration"

    def __init__(self, app_id: str, channel: Callable[[], AppChannel] | None) -> None:
        self._app_id = app_id
        # None without --app-port: subscribing is refused, as daprd refuses it without an app channel.
        self._channel = channel
        self._stores: dict[str, ConfigurationStore] = {}
        self._subscriptions: dict[str, _Subscription] = {}
        self._closing: set[asyncio.Task[None]] = set()

    # --- the component life cycle (runtime.blocks.base.BuildingBlock, runtime.blocks.hooks.AppFacing) --

    @classmethod
    def create(cls, context: BlockContext) -> ConfigurationAPIBlock:
        return cls(context.app_id, context.app_channel)

    def build(self, component: LoadedComponent) -> ConfigurationStore:
        return cast("ConfigurationStore", component.instance)

    def capabilities(self, entry: ConfigurationStore) -> list[str]:
        return []

    def install(self, name: str, entry: ConfigurationStore | None) -> None:
        if name in self._stores:
            self._drop(name, "its component changed" if entry is not None else "its component was removed")
        if entry is None:
            self._stores.pop(name, None)
        else:
            self._stores[name] = entry

    async def app_ready(self, channel: AppChannel) -> None:
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
            raise errors.configuration_stores_not_configured()
        found = self._stores.get(store)
        if found is None:
            raise errors.configuration_store_not_found(store)
        return found

    async def get(
        self, store: str, keys: list[str], metadata: dict[str, str]
    ) -> dict[str, ConfigurationItem]:
        component = self._find(store)
        try:
            return await component.get(keys, metadata)
        except Exception as exc:
            log.warning("configuration store %s: get failed: %s", store, exc)
            raise errors.configuration_get_failed(keys, store, exc) from None

    async def subscribe(self, store: str, keys: list[str], metadata: dict[str, str]) -> str:
        component = self._find(store)
        if self._channel is None:
            raise errors.app_channel_nil()
        channel = self._channel()
        sub_id = str(uuid.uuid4())

        async def push(items: dict[str, ConfigurationItem]) -> None:
            await self._push(channel, store, sub_id, items)

        try:
            watch = await component.subscribe(keys, metadata, push)
        except Exception as exc:
            log.warning("configuration store %s: subscribe failed: %s", store, exc)
            raise errors.configuration_subscribe_failed(keys, store, exc) from None
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

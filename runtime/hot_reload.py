"""Hot reload: resource files that change while the sidecar runs take effect without a restart.

Every ``--resources-path`` folder is watched (``watchfiles``: inotify on Linux, in a thread of its
own, with bursts of events from one save grouped together). After a change every file is read
again with the loaders used at start-up, and the result replaces the running definitions only if
all of it is sound:

1. Files are read and checked off the event loop. Any problem (bad YAML, an unknown type, a
   metadata mistake, a rule that does not compile, a missing secret) is one error line naming file,
   component and problem, and everything keeps running as it was.
2. Components are compared by building block and name with what runs (after their secret
   references are resolved, so a rotated secret counts as a change). New and changed ones are
   started first; if one fails to start, the ones started for this reload are closed again and
   the old definitions stay in use.
3. The new instances are swapped into the building blocks, so the next request uses them. The
   subscriptions whose definition or pubsub changed restart (deliveries in flight finish first);
   the others are not touched.
4. Replaced and removed instances are closed after a grace period, so a request that took the old
   instance just before the swap can still finish with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from watchfiles import Change, awatch

from components.secretstores.base import SecretStore
from runtime.deadlines import close_component
from runtime.pubsub import BrokerEntry
from runtime.resources import ComponentResource, ResourceError, load_components, load_subscriptions
from runtime.secrets import init_order, resolve_references, secret_values
from runtime.sidecar import LoadedComponent, Sidecar, StartupError
from runtime.state import StoreEntry
from runtime.subscriptions import Subscription, SubscriptionError, from_resource

log = logging.getLogger("pillion")
# watchfiles logs every batch of events at INFO; the reload says what changed.
logging.getLogger("watchfiles").setLevel(logging.WARNING)
# How long a replaced component stays open for the requests that still hold it.
RETIRE_AFTER = 5.0
# watchfiles groups the events of one save: it waits for STEP ms of quiet, at most DEBOUNCE ms.
STEP_MS = 50
DEBOUNCE_MS = 1_000

Key = tuple[str, str]


def _is_resource_file(change: Change, path: str) -> bool:
    # A Kubernetes ConfigMap volume changes all its files at once by swapping its `..data` link.
    return path.endswith((".yaml", ".yml")) or Path(path).name == "..data"


def _read(paths: Sequence[Path], app_id: str) -> tuple[list[ComponentResource], list[Subscription]]:
    """Every component (in start order) and declarative subscription; raises on any problem."""
    components = init_order(load_components(paths, app_id))
    subscriptions = [from_resource(s) for s in load_subscriptions(paths, app_id)]
    return components, subscriptions


def _key(resource: ComponentResource) -> Key:
    return (resource.building_block, resource.name)


@dataclass
class _Plan:
    """The components after the reload, in start order, and what had to be started for it."""

    components: list[LoadedComponent] = field(default_factory=list)
    started: list[LoadedComponent] = field(default_factory=list)
    entries: dict[Key, StoreEntry | BrokerEntry | SecretStore] = field(default_factory=dict)


class ResourceWatcher:
    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._retiring: list[LoadedComponent] = []
        self._retire_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch())

    async def close(self) -> None:
        """Stop watching and close what is still waiting out its grace period."""
        self._stop.set()
        if self._task is not None:
            # The watch thread notices the stop event within STEP_MS; a reload under way is cut
            # short, as the components are about to close anyway.
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._retire_task is not None:
            await self._retire_task  # with the stop event set it closes them at once

    async def _watch(self) -> None:
        paths = self.sidecar.options.resources_paths
        log.info("watching %s for resource changes", ", ".join(str(p) for p in paths))
        try:
            async for changes in awatch(
                *paths,
                watch_filter=_is_resource_file,
                recursive=False,
                stop_event=self._stop,
                step=STEP_MS,
                debounce=DEBOUNCE_MS,
            ):
                names = ", ".join(sorted({Path(path).name for _, path in changes}))
                log.info("resource files changed (%s): reloading", names)
                await self._reload()
        except Exception:
            log.exception("watching the resources paths failed; changes are no longer picked up")

    async def _reload(self) -> None:
        """Read the resources again and apply them, or log one error line and change nothing."""
        options = self.sidecar.options
        try:
            resources, declared = await asyncio.to_thread(_read, options.resources_paths, options.app_id)
            plan = await self._prepare(resources)
        except (ResourceError, SubscriptionError, _StartFailed) as exc:
            log.error("resources not reloaded: %s; the running definitions stay in use", exc)
            return
        await self._apply(plan, declared)

    async def _prepare(self, resources: list[ComponentResource]) -> _Plan:
        """Start what is new or changed; on failure close it again and raise."""
        sidecar = self.sidecar
        running = {_key(c.resource): c for c in sidecar.components}
        # Secret references resolve against the stores as they will be after this reload.
        stores: dict[str, SecretStore] = {
            c.resource.name: cast("SecretStore", c.instance)
            for c in sidecar.components
            if c.resource.building_block == "secretstores"
        }
        plan = _Plan()
        try:
            for unresolved in resources:
                key = _key(unresolved)
                resource = await resolve_references(unresolved, stores)
                old = running.get(key)
                if old is not None and old.resource == resource:
                    plan.components.append(old)
                    continue
                sidecar.redactor.add(secret_values(resource))
                loaded = await sidecar.init_component(resource, sidecar.options.resolved_data_dir)
                if loaded is None:  # it failed with ignoreErrors: the old one, if any, stays
                    if old is not None:
                        plan.components.append(old)
                    continue
                plan.started.append(loaded)
                entry = sidecar.block_entry(loaded)
                plan.entries[key] = entry
                plan.components.append(loaded)
                if not isinstance(entry, StoreEntry | BrokerEntry):
                    stores[resource.name] = entry
        except (ResourceError, StartupError) as exc:
            await self._close(plan.started)
            raise _StartFailed(str(exc)) from None
        return plan

    async def _apply(self, plan: _Plan, declared: list[Subscription]) -> None:
        sidecar = self.sidecar
        kept = {id(c) for c in plan.components}
        retired = [c for c in sidecar.components if id(c) not in kept]
        before = {_key(c.resource) for c in sidecar.components}
        after = {_key(c.resource) for c in plan.components}
        started = {_key(c.resource) for c in plan.started}
        subscriptions_changed = declared != sidecar.declared_subscriptions
        if not started and before == after and not subscriptions_changed:
            log.info("resources unchanged")
            return
        brokers: dict[str, BrokerEntry | None] = {}
        for (_, name), entry in plan.entries.items():
            if isinstance(entry, StoreEntry):
                sidecar.state.replace(entry)
            elif isinstance(entry, BrokerEntry):
                brokers[name] = entry
            else:
                sidecar.secrets.replace(name, entry)
        for block, name in before - after:
            if block == "state":
                sidecar.state.remove(name)
            elif block == "pubsub":
                brokers[name] = None
            else:
                sidecar.secrets.remove(name)
        sidecar.components = plan.components
        sidecar.declared_subscriptions = declared
        changes = [f"added {block} {name}" for block, name in sorted(started - before)]
        changes += [f"changed {block} {name}" for block, name in sorted(started & before)]
        changes += [f"removed {block} {name}" for block, name in sorted(before - after)]
        if subscriptions_changed:
            changes.append(f"declarative subscriptions changed ({len(declared)} in all)")
        log.info("resources reloaded: %s", ", ".join(changes))
        await sidecar.pubsub.reload(brokers, declared, sidecar.options.drain_timeout)
        if sidecar.app_reachable and not sidecar.pubsub.started and sidecar.options.app_port is not None:
            # The first pubsub arrived after the app was found: its subscriptions start now.
            await sidecar.start_subscriptions()
        self._retire(retired)

    def _retire(self, components: list[LoadedComponent]) -> None:
        if not components:
            return
        self._retiring.extend(components)
        if self._retire_task is None or self._retire_task.done():
            self._retire_task = asyncio.create_task(self._close_later())

    async def _close_later(self) -> None:
        while self._retiring:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), RETIRE_AFTER)
            due, self._retiring = self._retiring, []
            await self._close(due)

    @staticmethod
    async def _close(components: Sequence[LoadedComponent]) -> None:
        for loaded in components:
            await close_component(loaded.resource.name, loaded.instance)


class _StartFailed(Exception):
    """A new or changed component did not start; the message is the start-up error line."""

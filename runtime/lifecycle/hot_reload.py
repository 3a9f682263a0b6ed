"""Hot reload: resource files that change while the sidecar runs take effect without a restart.

Every ``--resources-path`` folder is watched (``watchfiles``: inotify on Linux, in a thread of its
own, with bursts of events from one save grouped together). After a change every file is read
again with the loaders used at start-up, and the result replaces the running definitions only if
all of it is sound:

1. Files are read and checked off the event loop. Any problem (bad YAML, an unknown type, a
   metadata mistake, a rule that does not compile, a missing secret) is one error line naming file,
   component and problem, and everything keeps running as it was.
2. The component set (``runtime/lifecycle/component_set.py``) compares components by building block and
   name with what runs (after their secret references are resolved, so a rotated secret counts
   as a change). New and changed ones are started first; if one fails to start, the ones started
   for this reload are closed again and the old definitions stay in use.
3. The new instances are swapped into the building blocks, so the next request uses them. The
   sidecar is then told the declarative subscriptions: those whose definition or pubsub changed
   restart (deliveries in flight finish first); the others are not touched.
4. Replaced and removed instances are closed after a grace period, so a request that took the old
   instance just before the swap can still finish with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from watchfiles import Change, awatch

from runtime.delivery.subscriptions import Subscription, SubscriptionError, from_resource
from runtime.lifecycle.component_set import ComponentSet, StartupError
from runtime.resources.loader import ComponentResource, ResourceError, load_components, load_subscriptions

log = logging.getLogger("pillion")
# watchfiles logs every batch of events at INFO; the reload says what changed.
logging.getLogger("watchfiles").setLevel(logging.WARNING)
# watchfiles groups the events of one save: it waits for STEP ms of quiet, at most DEBOUNCE ms.
STEP_MS = 50
DEBOUNCE_MS = 1_000

SubscriptionsChanged = Callable[[list[Subscription]], Awaitable[None]]


def _is_resource_file(change: Change, path: str) -> bool:
    # A Kubernetes ConfigMap volume changes all its files at once by swapping its `..data` link.
    return path.endswith((".yaml", ".yml")) or Path(path).name == "..data"


def _read(paths: Sequence[Path], app_id: str) -> tuple[list[ComponentResource], list[Subscription]]:
    """Every component and declarative subscription; raises on any problem."""
    components = load_components(paths, app_id)
    subscriptions = [from_resource(s) for s in load_subscriptions(paths, app_id)]
    return components, subscriptions


class ResourceWatcher:
    """Watches ``paths`` and reloads ``components`` from them; ``subscriptions_changed`` is told
    the declarative subscriptions after every reload that changed anything."""

    def __init__(
        self,
        paths: Sequence[Path],
        app_id: str,
        components: ComponentSet,
        declared: Sequence[Subscription],
        subscriptions_changed: SubscriptionsChanged,
    ) -> None:
        self.paths = list(paths)
        self.app_id = app_id
        self.components = components
        self._declared = list(declared)
        self._subscriptions_changed = subscriptions_changed
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch())

    async def close(self) -> None:
        """Stop watching."""
        self._stop.set()
        if self._task is not None:
            # The watch thread notices the stop event within STEP_MS; a reload under way is cut
            # short, as the components are about to close anyway.
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        log.info("watching %s for resource changes", ", ".join(str(p) for p in self.paths))
        try:
            async for changes in awatch(
                *self.paths,
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
        try:
            resources, declared = await asyncio.to_thread(_read, self.paths, self.app_id)
            plan = await self.components.prepare(resources)
        except (ResourceError, SubscriptionError, StartupError) as exc:
            log.error("resources not reloaded: %s; the running definitions stay in use", exc)
            return
        change = self.components.install(plan)
        subscriptions_changed = declared != self._declared
        if not change and not subscriptions_changed:
            log.info("resources unchanged")
            return
        self._declared = declared
        changes = change.describe()
        if subscriptions_changed:
            changes.append(f"declarative subscriptions changed ({len(declared)} in all)")
        log.info("resources reloaded: %s", ", ".join(changes))
        await self._subscriptions_changed(declared)
        # After the subscriptions moved off them, so their deliveries finish on open brokers.
        self.components.retire(change.retired)

"""The running components and their life cycle, owned in one place.

Start-up and hot reload go through the same steps: each resource (in start order, a component
after the secret store its ``secretKeyRef`` items read from) has its references resolved, is
started within its ``initTimeout``, and gets its entry built by its building block; only when
every one has started are the entries installed into the blocks, all in one step. Replaced and
removed components are retired: closed after a grace period, so requests that took them just
before the swap can still finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, cast

from components import registry
from components.base import Component, ComponentContext
from components.secretstores.base import SecretStore
from runtime.blocks.base import BuildingBlock, ComponentProblem, LoadedComponent
from runtime.blocks.secrets import SECRET_STORES, Redactor, init_order, resolve_references, secret_values
from runtime.lifecycle.deadlines import close_component, within
from runtime.lifecycle.unsupported import NotLoaded, set_aside
from runtime.resources.loader import ComponentResource, ResourceError, validate_component

log = logging.getLogger("pillion")
# How long a replaced component stays open for the requests that still hold it.
RETIRE_AFTER = 5.0
# A health probe must answer quickly even when a backend hangs.
PING_TIMEOUT = 1.0

Key = tuple[str, str]


class StartupError(Exception):
    """Start-up cannot go on; the message is the one line the user sees."""


class BlockLookup(Protocol):
    """Which building block serves a component kind (``runtime/blocks.Blocks`` is one)."""

    def for_kind(self, kind: str) -> BuildingBlock | None: ...


def _key(resource: ComponentResource) -> Key:
    return (resource.building_block, resource.name)


@dataclass
class Plan:
    """The components after a change, in start order, and the ones started for it."""

    components: list[LoadedComponent] = field(default_factory=list)
    started: list[LoadedComponent] = field(default_factory=list)
    # Components of building blocks Pillion lacks: listed, never started.
    not_loaded: list[NotLoaded] = field(default_factory=list)


@dataclass
class Change:
    """What installing a plan changed."""

    added: list[Key]
    changed: list[Key]
    removed: list[Key]
    # No longer served: to be closed once requests holding them have finished.
    retired: list[LoadedComponent]

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def describe(self) -> list[str]:
        return (
            [f"added {block} {name}" for block, name in self.added]
            + [f"changed {block} {name}" for block, name in self.changed]
            + [f"removed {block} {name}" for block, name in self.removed]
        )


class ComponentSet:
    def __init__(
        self,
        app_id: str,
        data_dir: Path,
        blocks: BlockLookup,
        redactor: Redactor,
        shared_dir: Path | None = None,
    ) -> None:
        self.app_id = app_id
        self.data_dir = data_dir
        # Where the stores shared by every app live (~/.pillion, or --data-dir).
        self.shared_dir = shared_dir
        self.not_loaded: list[NotLoaded] = []
        self.blocks = blocks
        self.redactor = redactor
        self._components: list[LoadedComponent] = []
        # Components that failed to start with ignoreErrors, and why (until one starts in their place).
        self.failed: dict[Key, tuple[ComponentResource, str]] = {}
        self._retiring: list[LoadedComponent] = []
        self._retire_task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    @property
    def components(self) -> Sequence[LoadedComponent]:
        """The components served now, in start order."""
        return tuple(self._components)

    async def start(self, resources: Sequence[ComponentResource]) -> None:
        """Start every resource and install them; ``StartupError`` on the first that fails,
        with the ones started before it closed again."""
        self.install(await self.prepare(resources))

    async def prepare(self, resources: Sequence[ComponentResource]) -> Plan:
        """Start what is new or changed compared with what runs (nothing is installed yet).

        ``StartupError`` when one fails: the ones started for this plan are closed again.
        """
        running = {_key(c.resource): c for c in self._components}
        # Secret references resolve against the stores as they will be after this plan.
        stores: dict[str, SecretStore] = {
            c.resource.name: cast(SecretStore, c.instance)
            for c in self._components
            if c.resource.building_block == SECRET_STORES
        }
        resources, aside = set_aside(resources)
        plan = Plan(not_loaded=aside)
        try:
            for unresolved in init_order(resources):
                resource = await resolve_references(unresolved, stores)
                old = running.get(_key(resource))
                if old is not None and old.resource == resource:
                    plan.components.append(old)
                    continue
                self.redactor.add(secret_values(resource))
                loaded = await self._start(resource)
                if loaded is None:  # it failed with ignoreErrors: the old one, if any, stays
                    if old is not None:
                        plan.components.append(old)
                    continue
                plan.started.append(loaded)
                self._build(loaded)
                plan.components.append(loaded)
                if resource.building_block == SECRET_STORES:
                    stores[resource.name] = cast(SecretStore, loaded.instance)
        except (ResourceError, StartupError) as exc:
            await _close(plan.started)
            raise StartupError(str(exc)) from None
        return plan

    def install(self, plan: Plan) -> Change:
        """Swap the plan's entries into their blocks, in one step: the next request uses them."""
        before = {_key(c.resource) for c in self._components}
        after = {_key(c.resource) for c in plan.components}
        for loaded in plan.started:
            self._block(loaded.resource).install(loaded.resource.name, loaded.entry)
        removed = sorted(before - after)
        for kind, name in removed:
            block = self.blocks.for_kind(kind)
            assert block is not None, "it was installed"
            block.install(name, None)
        kept = {id(c) for c in plan.components}
        retired = [c for c in self._components if id(c) not in kept]
        self._components = list(plan.components)
        self.not_loaded = plan.not_loaded
        started = {_key(c.resource) for c in plan.started}
        return Change(sorted(started - before), sorted(started & before), removed, retired)

    def retire(self, components: Sequence[LoadedComponent]) -> None:
        """Close these after the grace period (at once when the set closes)."""
        if not components:
            return
        self._retiring.extend(components)
        if self._retire_task is None or self._retire_task.done():
            self._retire_task = asyncio.create_task(self._close_later())

    async def close(self) -> None:
        """Close every component: the retiring ones, then the others in reverse start order."""
        self._closing.set()
        if self._retire_task is not None:
            await self._retire_task
        await _close(reversed(self._components))
        self._components.clear()

    async def unreachable(self) -> list[str]:
        """Names of components whose backend does not answer a ping right now."""

        async def check(loaded: LoadedComponent) -> str | None:
            try:
                await asyncio.wait_for(loaded.instance.ping(), PING_TIMEOUT)
            except Exception:
                return loaded.resource.name
            return None

        results = await asyncio.gather(*(check(c) for c in self._components))
        return [name for name in results if name is not None]

    # --- steps ---------------------------------------------------------------------------------

    def _block(self, resource: ComponentResource) -> BuildingBlock:
        block = self.blocks.for_kind(resource.building_block)
        if block is None:
            problem = f"no building block serves components of type {resource.type}"
            raise ResourceError(resource.file, resource.name, problem)
        return block

    async def _start(self, resource: ComponentResource) -> LoadedComponent | None:
        cls = registry.component_class(resource.type)
        assert cls is not None, "validate_component checked the type"
        metadata = validate_component(resource)
        context = ComponentContext(resource.name, self.app_id, self.data_dir, resource.file.parent)
        if self.shared_dir is not None:
            context = replace(context, shared_dir=self.shared_dir)
        try:
            instance: Component = cls(metadata, context)
            await within(instance.init(), resource.init_timeout, f"init of component {resource.name}")
        except Exception as exc:
            problem = self.redactor.redact(str(exc) or type(exc).__name__)
            if isinstance(exc, TimeoutError):
                problem = f"init did not finish within {resource.init_timeout:g}s (spec.initTimeout)"
            line = str(ResourceError(resource.file, resource.name, f"init failed: {problem}"))
            if resource.ignore_errors:
                log.warning("%s (ignored: ignoreErrors is true)", line)
                self.failed[_key(resource)] = (resource, line)
                return None
            raise StartupError(line) from None
        log.info("component %s (%s) is ready", resource.name, resource.type)
        self.failed.pop(_key(resource), None)
        return LoadedComponent(resource, instance, metadata)

    def _build(self, loaded: LoadedComponent) -> None:
        resource = loaded.resource
        block = self._block(resource)
        try:
            loaded.entry = block.build(loaded)
        except ComponentProblem as exc:
            raise ResourceError(resource.file, resource.name, str(exc)) from None
        loaded.capabilities = block.capabilities(loaded.entry)

    async def _close_later(self) -> None:
        while self._retiring:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), RETIRE_AFTER)
            due, self._retiring = self._retiring, []
            await _close(due)


async def _close(components: Iterable[LoadedComponent]) -> None:
    for loaded in components:
        await close_component(loaded.resource.name, loaded.instance)

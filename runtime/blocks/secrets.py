"""The secrets building block: the secrets API (store lookup, scoping, error mapping), the
resolution of ``secretKeyRef`` in component metadata, and the log filter that keeps resolved
secret values out of the sidecar's logs.

It talks to stores only through ``components.secretstores.base``; it never imports a concrete store.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, ClassVar, cast

from components.secretstores.base import SecretNotFound, SecretStore
from runtime import errors
from runtime.blocks.base import BlockContext, LoadedComponent
from runtime.resources.configuration import SecretScope
from runtime.resources.loader import ComponentResource, ResourceError, SecretKeyRef

if TYPE_CHECKING:
    from runtime.observability.metrics import Metrics

SECRET_STORES = "secretstores"


class SecretsBlock:
    kind: ClassVar[str] = SECRET_STORES

    def __init__(
        self,
        stores: Mapping[str, SecretStore],
        scopes: Mapping[str, SecretScope],
        metrics: Metrics | None = None,
    ) -> None:
        self._stores = dict(stores)
        self._scopes = dict(scopes)
        self.metrics = metrics

    @classmethod
    def create(cls, context: BlockContext) -> SecretsBlock:
        return cls({}, context.configuration.secret_scopes, context.metrics)

    # --- the component life cycle (runtime/lifecycle/component_set.py) -----------------------------------

    def build(self, component: LoadedComponent) -> SecretStore:
        return cast(SecretStore, component.instance)

    def capabilities(self, entry: SecretStore) -> list[str]:
        return sorted(str(f) for f in entry.features)

    def install(self, name: str, entry: SecretStore | None) -> None:
        if entry is None:
            self._stores.pop(name, None)
        else:
            self._stores[name] = entry

    def _failed(self, store: str, operation: str, exc: Exception) -> None:
        """Count a failure of the store itself; a secret that does not exist is not one."""
        if self.metrics is not None and not isinstance(exc, SecretNotFound):
            self.metrics.component_error(store, operation)

    def store(self, name: str) -> SecretStore:
        store = self._stores.get(name)
        if store is not None:
            return store
        if not self._stores:
            raise errors.secret_stores_not_configured()
        raise errors.secret_store_not_found(name)

    def allowed(self, store: str, name: str) -> bool:
        scope = self._scopes.get(store)
        return scope is None or scope.allows(name)

    async def get(self, store_name: str, name: str, metadata: Mapping[str, str]) -> dict[str, str]:
        store = self.store(store_name)
        if not self.allowed(store_name, name):
            raise errors.secret_permission_denied(store_name, name)
        try:
            return await store.get(name, metadata)
        except Exception as exc:
            self._failed(store_name, "get", exc)
            raise errors.secret_get_failed(store_name, name, exc) from exc

    async def bulk_get(self, store_name: str, metadata: Mapping[str, str]) -> dict[str, dict[str, str]]:
        store = self.store(store_name)
        try:
            secrets = await store.bulk_get(metadata)
        except Exception as exc:
            self._failed(store_name, "bulk_get", exc)
            raise errors.secret_bulk_get_failed(store_name, exc) from exc
        # Secrets the scope denies are left out without an error, as daprd does.
        return {name: secret for name, secret in secrets.items() if self.allowed(store_name, name)}


# --- secretKeyRef in component metadata ------------------------------------------------------------


def init_order(resources: Sequence[ComponentResource]) -> list[ComponentResource]:
    """The resources in file order, except that a component comes after the secret store its
    ``secretKeyRef`` items read from. A store that is not defined, or stores that read their
    secrets from each other in a circle, stop start-up."""
    stores = {r.name: r for r in resources if r.building_block == SECRET_STORES}
    ordered: list[ComponentResource] = []
    placed: set[int] = set()

    def place(resource: ComponentResource, chain: tuple[ComponentResource, ...]) -> None:
        if id(resource) in placed:
            return
        if resource in chain:
            circle = " -> ".join(r.name for r in (*chain[chain.index(resource) :], resource))
            raise ResourceError(
                resource.file, resource.name, f"secret stores read their secrets in a circle: {circle}"
            )
        if resource.secret_refs:
            store = stores.get(resource.secret_store)
            if store is None:
                raise ResourceError(resource.file, resource.name, _missing_store(resource, resources))
            place(store, (*chain, resource))
        placed.add(id(resource))
        ordered.append(resource)

    for resource in resources:
        place(resource, ())
    return ordered


def _missing_store(resource: ComponentResource, resources: Sequence[ComponentResource]) -> str:
    where = f"metadata field {resource.secret_refs[0].field!r}"
    other = next((r for r in resources if r.name == resource.secret_store), None)
    if other is not None:
        return (
            f"{where}: auth.secretStore {resource.secret_store!r} is a {other.building_block} "
            "component, not a secret store"
        )
    return f"{where}: secret store {resource.secret_store!r} (auth.secretStore) is not defined"


async def resolve_references(
    resource: ComponentResource, stores: Mapping[str, SecretStore]
) -> ComponentResource:
    """The resource with every ``secretKeyRef`` replaced by the secret's value.

    A missing store, secret or key, or an empty value, is a ResourceError naming the field and
    the reference; the value itself never appears in a message.
    """
    if not resource.secret_refs:
        return resource
    store_name = resource.secret_store
    store = stores.get(store_name)
    fetched: dict[str, dict[str, str]] = {}
    values: dict[str, str] = {}
    for ref in resource.secret_refs:
        if store is None:
            raise _ref_error(
                resource, ref, f"secret store {store_name!r} did not start (it has ignoreErrors: true)"
            )
        if ref.name not in fetched:
            try:
                fetched[ref.name] = await store.get(ref.name, {})
            except SecretNotFound:
                raise _ref_error(
                    resource, ref, f"secret {ref.name!r} not found in secret store {store_name!r}"
                ) from None
            except Exception as exc:
                problem = f"reading secret {ref.name!r} from secret store {store_name!r} failed: {exc}"
                raise _ref_error(resource, ref, problem) from None
        value = fetched[ref.name].get(ref.key)
        if not value:
            missing = "not found in" if value is None else "is empty in"
            problem = f"secret {ref.name!r} key {ref.key!r} {missing} secret store {store_name!r}"
            raise _ref_error(resource, ref, problem)
        values[ref.field] = value
    return replace(resource, metadata={**resource.metadata, **values})


def _ref_error(resource: ComponentResource, ref: SecretKeyRef, problem: str) -> ResourceError:
    return ResourceError(resource.file, resource.name, f"metadata field {ref.field!r}: {problem}")


def secret_values(resource: ComponentResource) -> list[str]:
    """The values a resolved resource took from secrets."""
    return [resource.metadata[ref.field] for ref in resource.secret_refs if ref.field in resource.metadata]


# --- keeping secret values out of the logs --------------------------------------------------------


class Redactor(logging.Filter):
    """Replaces every resolved secret value in log records with ``***``.

    Installed on the log handlers, so it also covers messages from libraries (a driver that
    echoes a connection string, a traceback). Values shorter than MIN_LENGTH are left alone:
    masking every "1" or "on" would wreck the logs and hide nothing.
    """

    MIN_LENGTH = 4
    MASK = "***"

    def __init__(self) -> None:
        super().__init__()
        self._values: list[str] = []

    def add(self, values: Iterable[str]) -> None:
        known = set(self._values) | {v for v in values if len(v) >= self.MIN_LENGTH}
        # Longest first, so a secret that contains another is masked whole.
        self._values = sorted(known, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, self.MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._values:
            return True
        message = record.getMessage()
        cleaned = self.redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        return True

# Generated from aio.py by clients/python/generate_sync.py: edit aio.py, then run it.
"""The blocking client."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from pillion_client import _wire
from pillion_client.errors import DaprError
from pillion_client.models import (
    BulkPublishEntry,
    BulkStateItem,
    Consistency,
    DeleteItem,
    FailedEntry,
    QueryResponse,
    SaveItem,
    SidecarMetadata,
    StateItem,
)

T = TypeVar("T")


class DaprClient:
    """Calls one sidecar over the Dapr HTTP API. Without arguments it reads DAPR_HTTP_ENDPOINT or
    DAPR_HTTP_PORT (default 3500) and DAPR_API_TOKEN. A non-2xx answer raises :class:`DaprError`."""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        api_token: str | None = None,
        timeout: float = 60.0,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.endpoint = _wire.base_url(endpoint, host, port)
        self._headers = _wire.default_headers(api_token)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def _send(self, call: _wire.Call[T]) -> T:
        response = self._http.request(
            call.method,
            self.endpoint + call.path,
            params=call.params,
            headers={**self._headers, **call.headers},
            content=call.content,
        )
        return call.answer(response)

    # --- state -----------------------------------------------------------------------------------

    def get_state(
        self,
        store: str,
        key: str,
        *,
        consistency: Consistency | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> StateItem | None:
        """The stored item, or None when the key does not exist."""
        return self._send(_wire.get_state(store, key, consistency, metadata))

    def save_state(
        self, store: str, items: Sequence[SaveItem], *, metadata: Mapping[str, str] | None = None
    ) -> None:
        """Save items; ``metadata`` goes to every item (and wins over the item's own)."""
        self._send(_wire.save_state(store, items, metadata))

    def delete_state(
        self,
        store: str,
        key: str,
        *,
        etag: str | None = None,
        concurrency: str | None = None,
        consistency: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self._send(_wire.delete_state(store, key, etag, concurrency, consistency, metadata))

    def get_bulk_state(
        self,
        store: str,
        keys: Sequence[str],
        *,
        parallelism: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> list[BulkStateItem]:
        """One item per key, in order; ``found`` is false for keys that do not exist."""
        return self._send(_wire.get_bulk_state(store, keys, parallelism, metadata))

    def execute_transaction(
        self,
        store: str,
        operations: Sequence[SaveItem | DeleteItem],
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """All or nothing; an ETag mismatch fails it with 500 ERR_STATE_TRANSACTION."""
        self._send(_wire.execute_transaction(store, operations, metadata))

    def query_state(
        self, store: str, query: Mapping[str, Any], *, metadata: Mapping[str, str] | None = None
    ) -> QueryResponse:
        return self._send(_wire.query_state(store, query, metadata))

    # --- pub/sub ---------------------------------------------------------------------------------

    def publish(
        self,
        pubsub: str,
        topic: str,
        data: Any,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Bytes go as application/octet-stream, text as text/plain, anything else as JSON; the
        sidecar wraps the data in a CloudEvent."""
        self._send(_wire.publish(pubsub, topic, data, content_type, metadata))

    def publish_cloud_event(
        self, pubsub: str, topic: str, event: Mapping[str, Any], *, metadata: Mapping[str, str] | None = None
    ) -> None:
        """Publish your own CloudEvent; the sidecar keeps its fields."""
        self._send(_wire.publish(pubsub, topic, dict(event), "application/cloudevents+json", metadata))

    def publish_raw(
        self,
        pubsub: str,
        topic: str,
        data: Any,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """No CloudEvent envelope: subscribers get the bytes as they were sent."""
        raw = {**(metadata or {}), "rawPayload": "true"}
        self._send(_wire.publish(pubsub, topic, data, content_type, raw))

    def publish_bulk(
        self,
        pubsub: str,
        topic: str,
        entries: Sequence[BulkPublishEntry],
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> list[FailedEntry]:
        """The entries that were not published (empty when all were)."""
        return self._send(_wire.publish_bulk(pubsub, topic, entries, metadata))

    # --- secrets ---------------------------------------------------------------------------------

    def get_secret(
        self, store: str, name: str, *, metadata: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        return self._send(_wire.get_secret(store, name, metadata))

    def get_bulk_secrets(
        self, store: str, *, metadata: Mapping[str, str] | None = None
    ) -> dict[str, dict[str, str]]:
        """Secret name -> its keys and values; secrets denied by scope are left out."""
        return self._send(_wire.get_bulk_secrets(store, metadata))

    # --- metadata and health ---------------------------------------------------------------------

    def get_metadata(self) -> SidecarMetadata:
        return self._send(_wire.get_metadata())

    def set_metadata(self, key: str, value: str) -> None:
        self._send(_wire.set_metadata(key, value))

    def is_healthy(self) -> bool:
        """True once the sidecar is fully up, the app included (GET /v1.0/healthz)."""
        try:
            self._send(_wire.healthz(outbound=False))
        except DaprError:
            return False
        return True

    def wait_for_sidecar(self, timeout: float = 60.0, interval: float = 0.1) -> None:
        """Block until the sidecar's components and API are up (GET /v1.0/healthz/outbound)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._send(_wire.healthz(outbound=True))
                return
            except (DaprError, httpx.TransportError) as exc:
                if time.monotonic() + interval > deadline:
                    raise TimeoutError(
                        f"sidecar at {self.endpoint} not ready within {timeout}s: {exc}"
                    ) from exc
            time.sleep(interval)

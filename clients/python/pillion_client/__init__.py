"""A small typed client for the Dapr HTTP API v1.0 (Pillion or daprd): state, pub/sub, secrets,
metadata and health, blocking (:class:`DaprClient`) or asyncio (:class:`AsyncDaprClient`).

The subscription helper for Starlette/ASGI apps is in :mod:`pillion_client.subscriptions`.
"""

from pillion_client.aio import AsyncDaprClient
from pillion_client.client import DaprClient
from pillion_client.errors import DaprError
from pillion_client.models import (
    BulkPublishEntry,
    BulkStateItem,
    ComponentMetadata,
    DeleteItem,
    FailedEntry,
    QueryResponse,
    Rule,
    SaveItem,
    SidecarMetadata,
    StateItem,
    SubscriptionMetadata,
)

__all__ = [
    "AsyncDaprClient",
    "BulkPublishEntry",
    "BulkStateItem",
    "ComponentMetadata",
    "DaprClient",
    "DaprError",
    "DeleteItem",
    "FailedEntry",
    "QueryResponse",
    "Rule",
    "SaveItem",
    "SidecarMetadata",
    "StateItem",
    "SubscriptionMetadata",
]

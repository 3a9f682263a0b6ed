"""A state request resolves its store once and works on that instance to the end (issue 12).

The sidecar runs in this process with a real in-memory store; right after each request's lookup
an empty store is installed under the same name, as a hot reload would do at the worst moment.
The request must finish on the store it looked up, and look it up only once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from components.base import ComponentContext
from components.state.base import SetOp
from components.state.in_memory import InMemoryStateStore
from runtime.blocks.state import StoreEntry
from runtime.http.app import create_app
from runtime.lifecycle.sidecar import Sidecar, SidecarOptions
from tests.support import write_resources

STORE = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
spec:
  type: state.in-memory
  version: v1
"""
UPSERT = {"operation": "upsert", "request": {"key": "k", "value": 1}}
# method, path, JSON body, expected status, key the looked-up store holds afterwards (or lost)
REQUESTS: list[tuple[str, str, Any, int, str, bool]] = [
    ("POST", "/v1.0/state/statestore", [{"key": "k", "value": 1}], 204, "k", True),
    ("POST", "/v1.0/state/statestore/transaction", {"operations": [UPSERT]}, 204, "k", True),
    ("DELETE", "/v1.0/state/statestore/seeded", None, 204, "seeded", False),
    ("GET", "/v1.0/state/statestore/seeded", None, 200, "seeded", True),
    ("POST", "/v1.0/state/statestore/bulk", {"keys": ["seeded"]}, 200, "seeded", True),
    ("POST", "/v1.0-alpha1/state/statestore/query", {"filter": {}}, 200, "seeded", True),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "key", "held"), REQUESTS, ids=[r[1] + " " + r[0] for r in REQUESTS]
)
def test_a_request_ends_on_the_store_it_looked_up(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    path: str,
    body: Any,
    status: int,
    key: str,
    held: bool,
) -> None:
    async def scenario() -> None:
        resources = write_resources(tmp_path, {"store.yaml": STORE})
        sidecar = Sidecar(SidecarOptions(app_id="lookup", resources_paths=[resources], enable_metrics=False))
        await sidecar.start_components(sidecar.load_resources())
        block = sidecar.state
        first = block.entry("statestore")
        await first.store.set(SetOp(first.prefix + "seeded", b'{"n":1}', None, False, None))
        context = ComponentContext("statestore", "lookup", tmp_path, tmp_path)
        other = StoreEntry(first.name, InMemoryStateStore({"cleanupInterval": 0.0}, context), first.prefix)
        looked_up: list[str] = []
        lookup = block.entry

        def lookup_then_reload(name: str) -> StoreEntry:
            found = lookup(name)
            looked_up.append(name)
            block.install(name, other)
            return found

        monkeypatch.setattr(block, "entry", lookup_then_reload)
        transport = httpx.ASGITransport(app=create_app(sidecar))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://sidecar") as client:
                response = await client.request(method, path, json=body)
            assert response.status_code == status, response.text
            if status == 200:
                assert b'"n":1' in response.content  # read from the store looked up
            assert looked_up == ["statestore"]
            assert (await first.store.get(first.prefix + key) is not None) == held
            assert await other.store.get(other.prefix + "k") is None
        finally:
            await sidecar.stop_components()

    asyncio.run(scenario())

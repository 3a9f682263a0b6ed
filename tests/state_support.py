"""Component YAML for each state store under test, so one suite runs on all of them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse


def component(name: str, type_name: str, metadata: dict[str, str]) -> str:
    items = "".join(f'  - name: {k}\n    value: "{v}"\n' for k, v in metadata.items())
    body = f"  metadata:\n{items}" if items else ""
    return (
        "apiVersion: dapr.io/v1alpha1\nkind: Component\n"
        f"metadata:\n  name: {name}\nspec:\n  type: {type_name}\n  version: v1\n{body}"
    )


def redis_metadata(redis_url: str) -> dict[str, str]:
    parsed = urlparse(redis_url)
    db = parsed.path.strip("/") or "0"
    meta = {"redisHost": f"{parsed.hostname}:{parsed.port or 6379}", "redisDB": db}
    if parsed.password:
        meta["redisPassword"] = parsed.password
    return meta


StoreFactory = Callable[[str, Path, str], str]


def in_memory(name: str, workdir: Path, redis_url: str) -> str:
    return component(name, "state.in-memory", {})


def sqlite(name: str, workdir: Path, redis_url: str) -> str:
    return component(name, "state.sqlite", {"connectionString": str(workdir / f"{name}.db")})


def redis(name: str, workdir: Path, redis_url: str) -> str:
    return component(name, "state.redis", redis_metadata(redis_url))


def postgresql(name: str, workdir: Path, postgres_url: str) -> str:
    # A short sweep interval, so that the cleanup task runs (and so is exercised) during the suite.
    return component(name, "state.postgresql", {"connectionString": postgres_url, "cleanupInterval": "1s"})


STORES: dict[str, StoreFactory] = {
    "in-memory": in_memory,
    "sqlite": sqlite,
    "redis": redis,
    "postgresql": postgresql,
}
# The fixture giving the URL of the service a store needs (the factories' third argument).
SERVICE_FIXTURES: dict[str, str] = {"redis": "redis_url", "postgresql": "postgres_url"}

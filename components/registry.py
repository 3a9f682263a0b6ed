"""Dapr component type name -> implementing class. Adding a component is one line here.

Modules are imported on first use, so a sidecar that uses no Redis never imports the Redis client.
"""

from __future__ import annotations

import importlib
from typing import Any

_COMPONENTS: dict[str, str] = {
    "state.in-memory": "components.state.in_memory:InMemoryStateStore",
    "state.sqlite": "components.state.sqlite:SQLiteStateStore",
    "state.redis": "components.state.redis:RedisStateStore",
    "state.postgresql": "components.state.postgresql:PostgreSQLStateStore",
    "secretstores.local.file": "components.secretstores.local_file:LocalFileSecretStore",
    "secretstores.local.env": "components.secretstores.local_env:LocalEnvSecretStore",
    "secretstores.local.encrypted": "components.secretstores.local_encrypted:LocalEncryptedSecretStore",
    "pubsub.redis": "components.pubsub.redis:RedisPubSub",
    "pubsub.in-memory": "components.pubsub.in_memory:InMemoryPubSub",
    "pubsub.sqlite": "components.pubsub.sqlite:SQLitePubSub",
    "pubsub.jetstream": "components.pubsub.jetstream:JetStreamPubSub",
    "pubsub.rabbitmq": "components.pubsub.rabbitmq:RabbitMQPubSub",
    "pubsub.mqtt3": "components.pubsub.mqtt3:MQTTPubSub",
    "bindings.cron": "components.bindings.cron:CronBinding",
    "bindings.http": "components.bindings.http:HTTPBinding",
    "bindings.localstorage": "components.bindings.localstorage:LocalStorageBinding",
    "bindings.postgresql": "components.bindings.postgresql:PostgreSQLBinding",
    "bindings.postgres": "components.bindings.postgresql:PostgreSQLBinding",
    "bindings.rabbitmq": "components.bindings.rabbitmq:RabbitMQBinding",
    "bindings.redis": "components.bindings.redis:RedisBinding",
    "configuration.redis": "components.configuration.redis:RedisConfigurationStore",
    "configuration.postgresql": "components.configuration.postgresql:PostgreSQLConfigurationStore",
    "configuration.postgres": "components.configuration.postgresql:PostgreSQLConfigurationStore",
    "lock.redis": "components.lock.redis:RedisLockStore",
    "lock.sqlite": "components.lock.sqlite:SQLiteLockStore",
    "nameresolution.sqlite": "components.nameresolution.sqlite:SQLiteNameResolver",
    "nameresolution.redis": "components.nameresolution.redis:RedisNameResolver",
    "nameresolution.kubernetes": "components.nameresolution.kubernetes:KubernetesNameResolver",
}


def known_types() -> list[str]:
    return sorted(_COMPONENTS)


def implements_block(block: str) -> bool:
    """Whether Pillion has the building block at all (``lock`` for ``lock.redis``)."""
    return block in _BLOCKS


_BLOCKS = frozenset(name.split(".", 1)[0] for name in _COMPONENTS)


def component_class(type_name: str) -> Any | None:
    target = _COMPONENTS.get(type_name)
    if target is None:
        return None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)

"""Shared fixtures: real backing services, started privately unless the environment names one."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis

from tests import broker_support
from tests.postgres_support import HOW_TO_GET_POSTGRES, private_database, server_url
from tests.support import free_port

HOW_TO_GET_REDIS = (
    "Redis is needed for these tests. Install it (Debian/Ubuntu: `apt-get install redis-server`; "
    "`.ci/run` does this) so the tests can start a private redis-server, or point REDIS_URL at a "
    "Redis you are happy for the tests to write to (e.g. REDIS_URL=redis://127.0.0.1:6379/15)."
)


# What makes a test need more than the sidecar process: a fixture that reaches Redis, PostgreSQL or a
# broker (the shared ones below, and the private servers some modules start and stop), or a
# parameter naming a backend that lives in such a server. Those tests are marked
# `services`; `./scripts/test --fast` runs the rest (see README, "Tests").
SERVICE_FIXTURES = frozenset(
    {
        *("redis_url", "postgres_url", "nats_url", "rabbitmq_url", "mqtt_url"),
        *("doomed_redis", "private_redis", "tls_redis", "topology"),
    }
)
SERVICE_BACKENDS = frozenset({"redis", "postgresql", "jetstream", "rabbitmq", "mqtt3"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        backends = {
            part for value in (callspec.params.values() if callspec else ()) for part in str(value).split("+")
        }
        if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())) or SERVICE_BACKENDS & backends:
            item.add_marker(pytest.mark.services)


@pytest.fixture
def anyio_backend() -> str:
    """Tests marked ``anyio`` run on asyncio, as the sidecar does."""
    return "asyncio"


@pytest.fixture(scope="session", autouse=True)
def private_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Sidecars started by tests register for `pillion status` here, not in the user's run dir."""
    previous = os.environ.get("PILLION_RUN_DIR")
    os.environ["PILLION_RUN_DIR"] = str(tmp_path_factory.mktemp("run"))
    yield
    if previous is None:
        del os.environ["PILLION_RUN_DIR"]
    else:
        os.environ["PILLION_RUN_DIR"] = previous


@pytest.fixture(scope="session", autouse=True)
def private_pillion_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The machine-wide CA and name-resolution file of test sidecars live here, not in ~/.pillion."""
    previous = os.environ.get("PILLION_HOME")
    os.environ["PILLION_HOME"] = str(tmp_path_factory.mktemp("pillion-home"))
    yield
    if previous is None:
        del os.environ["PILLION_HOME"]
    else:
        os.environ["PILLION_HOME"] = previous


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from_env = os.environ.get("REDIS_URL")
    if from_env:
        try:
            redis.Redis.from_url(from_env).ping()
        except redis.RedisError as exc:
            pytest.fail(f"REDIS_URL={from_env} cannot be reached ({exc}). {HOW_TO_GET_REDIS}")
        yield from_env
        return
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail(HOW_TO_GET_REDIS)
    port = free_port()
    workdir: Path = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"the private redis-server on port {port} did not start. {HOW_TO_GET_REDIS}")
            time.sleep(0.05)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A private database for this session on PILLION_POSTGRES_URL's server (or the local one)."""
    server = server_url()
    try:
        with private_database(server) as url:
            yield url
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        where = urlsplit(server)
        pytest.fail(f"PostgreSQL at {where.hostname}:{where.port or 5432}: {exc}. {HOW_TO_GET_POSTGRES}")


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """NATS with JetStream (PILLION_NATS_URL, else the local server); this run's streams are
    deleted at the end."""
    url = os.environ.get("PILLION_NATS_URL", broker_support.NATS_URL)
    problem = broker_support.unreachable(url, 4222)
    if problem:
        pytest.fail(f"NATS at {problem}. {broker_support.HOW_TO_GET['NATS']}")
    try:
        yield url
    finally:
        broker_support.delete_streams(url)


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """RabbitMQ (PILLION_RABBITMQ_URL, else the local broker), in a vhost of this run's own when
    rabbitmqctl can make one."""
    url = os.environ.get("PILLION_RABBITMQ_URL", broker_support.RABBITMQ_URL)
    problem = broker_support.unreachable(url, 5672)
    if problem:
        pytest.fail(f"RabbitMQ at {problem}. {broker_support.HOW_TO_GET['RabbitMQ']}")
    with broker_support.private_vhost(url) as private:
        yield private


@pytest.fixture(scope="session")
def mqtt_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An MQTT broker (PILLION_MQTT_URL, else the local Mosquitto); the persistent sessions this
    run's sidecars created are ended at the end."""
    url = os.environ.get("PILLION_MQTT_URL", broker_support.MQTT_URL)
    problem = broker_support.unreachable(url, 1883)
    if problem:
        pytest.fail(f"MQTT broker at {problem}. {broker_support.HOW_TO_GET['MQTT']}")
    try:
        yield url
    finally:
        broker_support.end_mqtt_sessions(url, tmp_path_factory.getbasetemp())

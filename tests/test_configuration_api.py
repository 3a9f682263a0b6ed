"""Configuration API (issue 16, part 5) on configuration.redis and configuration.postgresql, with
updates pushed to a real app process."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis

from tests.echo_app import EchoApp, Seen
from tests.private_redis import PrivateRedis
from tests.state_support import component
from tests.support import SidecarProcess, start_sidecar

TABLE = "config_items"
CHANNEL = "config_changes"
TRIGGER_SQL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (key text NOT NULL, value text, version text, metadata json);
CREATE OR REPLACE FUNCTION notify_config_items() RETURNS trigger AS $$
BEGIN
  PERFORM pg_notify('{CHANNEL}', json_build_object('data', json_build_object(
    'key', NEW.key, 'value', NEW.value, 'version', NEW.version, 'metadata', NEW.metadata))::text);
  RETURN NEW;
END; $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS config_items_notify ON {TABLE};
CREATE TRIGGER config_items_notify AFTER INSERT OR UPDATE ON {TABLE}
  FOR EACH ROW EXECUTE FUNCTION notify_config_items();
"""


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of this module's own: the component turns keyspace notifications on, which
    must never happen to a shared server."""
    server = PrivateRedis(tmp_path_factory.mktemp("config-redis"))
    yield server.address
    server.stop()


def run_sql(url: str, sql: str, *args: object) -> None:
    async def go() -> None:
        connection = await asyncpg.connect(url)
        try:
            await connection.execute(sql, *args)
        finally:
            await connection.close()

    asyncio.run(go())


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EchoApp]:
    started = EchoApp(tmp_path_factory.mktemp("app"))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def sidecar(
    tmp_path_factory: pytest.TempPathFactory, app: EchoApp, private_redis: str, postgres_url: str
) -> Iterator[SidecarProcess]:
    run_sql(postgres_url, TRIGGER_SQL)
    resources = {
        "redis.yaml": component("config", "configuration.redis", {"redisHost": private_redis}),
        "pg.yaml": component(
            "pgconfig",
            "configuration.postgresql",
            {"connectionString": postgres_url, "table": TABLE, "notifyChannel": CHANNEL},
        ),
    }
    started = start_sidecar(
        tmp_path_factory.mktemp("sidecar"), resources=resources, extra_args=["--app-port", str(app.port)]
    )
    yield started
    started.stop()


def updates(app: EchoApp, path: str, count: int, timeout: float = 5) -> list[Seen]:
    return app.wait_for(count, "POST", path, timeout=timeout)


def test_get_reads_daprds_redis_format(sidecar: SidecarProcess, private_redis: str) -> None:
    direct = redis.Redis(port=int(private_redis.split(":")[1]))
    direct.set("greeting", "hello||v1")
    direct.set("plain", "x")
    direct.set("novalue", "||v2")
    direct.rpush("alist", "not a string")
    with sidecar.client() as client:
        got = client.get(
            "/v1.0/configuration/config", params=[("key", "greeting"), ("key", "plain"), ("key", "alist")]
        )
        assert got.status_code == 200
        assert got.json() == {"greeting": {"value": "hello", "version": "v1"}, "plain": {"value": "x"}}
        assert client.get("/v1.0-alpha1/configuration/config?key=nothing").status_code == 204
        everything = client.get("/v1.0/configuration/config").json()
        assert (
            {"greeting", "plain"} <= set(everything)
            and "alist" not in everything
            and "novalue" not in everything
        )


def test_errors(sidecar: SidecarProcess, tmp_path: Path) -> None:
    with sidecar.client() as client:
        unknown = client.get("/v1.0/configuration/nope?key=a")
        assert (unknown.status_code, unknown.json()) == (
            400,
            {
                "errorCode": "ERR_CONFIGURATION_STORE_NOT_FOUND",
                "message": "configuration store nope not found",
            },
        )
        gone = client.get("/v1.0/configuration/config/not-an-id/unsubscribe")
        assert (gone.status_code, gone.json()) == (
            500,
            {
                "message": "failed to unsubscribe to configuration request not-an-id: "
                "subscription with id not-an-id does not exist"
            },
        )
    plain = start_sidecar(tmp_path, resources={"s.yaml": component("statestore", "state.in-memory", {})})
    try:
        none = httpx.get(plain.url + "/v1.0/configuration/config")
        assert (none.status_code, none.json()["errorCode"]) == (500, "ERR_CONFIGURATION_STORE_NOT_CONFIGURED")
    finally:
        plain.stop()


def test_subscribe_needs_an_app(tmp_path: Path, private_redis: str) -> None:
    lone = start_sidecar(
        tmp_path,
        resources={"c.yaml": component("config", "configuration.redis", {"redisHost": private_redis})},
    )
    try:
        refused = httpx.get(lone.url + "/v1.0/configuration/config/subscribe?key=a")
        assert (refused.status_code, refused.json()) == (
            500,
            {
                "errorCode": "ERR_APP_CHANNEL_NIL",
                "message": "app channel is not initialized. cannot subscribe to configuration updates",
            },
        )
    finally:
        lone.stop()


def test_redis_updates_reach_the_app_within_a_second(
    sidecar: SidecarProcess, app: EchoApp, private_redis: str
) -> None:
    direct = redis.Redis(port=int(private_redis.split(":")[1]))
    key = f"flag-{uuid.uuid4().hex[:6]}"
    other = key + "-other"
    with sidecar.client() as client:
        sub_id = client.get(f"/v1.0/configuration/config/subscribe?key={key}&key={other}").json()["id"]
        path = f"/configuration/config/{key}"
        started = time.monotonic()
        direct.set(key, "on||3")
        pushed = updates(app, path, 1, timeout=1)
        assert time.monotonic() - started < 1
        assert pushed[0].header("content-type") == "application/json"
        assert json.loads(pushed[0].body) == {"id": sub_id, "items": {key: {"value": "on", "version": "3"}}}
        direct.delete(key)
        assert json.loads(updates(app, path, 2)[1].body) == {"id": sub_id, "items": {key: {}}}
        direct.set(key + "-unwatched", "x")
        direct.set(other, "y")
        updates(app, f"/configuration/config/{other}", 1)
        assert app.seen("POST", f"/configuration/config/{key}-unwatched") == []
        assert client.get(f"/v1.0/configuration/config/{sub_id}/unsubscribe").json() == {"ok": True}
        direct.set(key, "after||4")
        time.sleep(0.5)
        assert len(app.seen("POST", path)) == 2
        # Every key: a subscription without keys.
        all_id = client.get("/v1.0-alpha1/configuration/config/subscribe").json()["id"]
        direct.set(key + "-any", "z")
        assert json.loads(updates(app, f"/configuration/config/{key}-any", 1)[0].body)["id"] == all_id
        assert client.get(f"/v1.0-alpha1/configuration/config/{all_id}/unsubscribe").json() == {"ok": True}


def test_keyspace_events_are_only_checked_when_told(tmp_path: Path, app: EchoApp, private_redis: str) -> None:
    direct = redis.Redis(port=int(private_redis.split(":")[1]))
    direct.config_set("notify-keyspace-events", "")
    checked = component(
        "strict", "configuration.redis", {"redisHost": private_redis, "configureKeyspaceEvents": "false"}
    )
    strict = start_sidecar(tmp_path, resources={"c.yaml": checked}, extra_args=["--app-port", str(app.port)])
    try:
        refused = httpx.get(strict.url + "/v1.0/configuration/strict/subscribe?key=a")
        assert refused.status_code == 500
        assert refused.json()["errorCode"] == "ERR_CONFIGURATION_SUBSCRIBE"
        assert "notify-keyspace-events" in refused.json()["message"]
        assert direct.config_get("notify-keyspace-events")["notify-keyspace-events"] == ""
    finally:
        strict.stop()
        direct.config_set("notify-keyspace-events", "Kg$xe")


def test_postgresql_get_and_trigger_updates(sidecar: SidecarProcess, app: EchoApp, postgres_url: str) -> None:
    key = f"pg-{uuid.uuid4().hex[:6]}"
    run_sql(
        postgres_url,
        f"INSERT INTO {TABLE} VALUES ($1, 'old', '1', NULL), ($1, 'new', '2', '{{\"team\": \"a\"}}')",
        key,
    )
    with sidecar.client() as client:
        got = client.get(f"/v1.0/configuration/pgconfig?key={key}")
        assert got.json() == {key: {"value": "new", "version": "2", "metadata": {"team": "a"}}}
        sub_id = client.get(f"/v1.0/configuration/pgconfig/subscribe?key={key}").json()["id"]
        started = time.monotonic()
        run_sql(
            postgres_url,
            f"UPDATE {TABLE} SET value = 'newer', version = '3' WHERE key = $1 AND version = '2'",
            key,
        )
        pushed = updates(app, f"/configuration/pgconfig/{key}", 1, timeout=1)
        assert time.monotonic() - started < 1
        assert json.loads(pushed[0].body) == {
            "id": sub_id,
            "items": {key: {"value": "newer", "version": "3", "metadata": {"team": "a"}}},
        }
        run_sql(postgres_url, f"INSERT INTO {TABLE} VALUES ('someone-else', 'x', '1', NULL)")
        time.sleep(0.3)
        assert app.seen("POST", "/configuration/pgconfig/someone-else") == []
        assert client.get(f"/v1.0/configuration/pgconfig/{sub_id}/unsubscribe").json() == {"ok": True}


def test_postgresql_table_must_exist(tmp_path: Path, postgres_url: str) -> None:
    missing = component(
        "bad", "configuration.postgresql", {"connectionString": postgres_url, "table": "no_such_table"}
    )
    with pytest.raises(RuntimeError, match="postgreSQL configuration table 'no_such_table' does not exist"):
        start_sidecar(tmp_path, resources={"c.yaml": missing}, timeout=15)

"""Dead letters through the sidecar's admin API and ``pillion deadletters`` (issue 17): list, show,
replay (at-least-once, back to the original topic) and purge, on every broker that can list a
topic's messages; a broker that cannot says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.pubsub_support import BROKERS, FAST_RETRIES, Delivery, Reply, SubscriberApp, running, service_url
from tests.support import SidecarProcess

LISTING = ["sqlite", "redis", "jetstream"]


def unique(base: str) -> str:
    return f"{base}-{uuid.uuid4().hex[:8]}"


ADMIN = "/v1.0-alpha1/pillion/deadletters"


class Switch:
    """The app's answer: DROP while ``failing``, SUCCESS after."""

    def __init__(self) -> None:
        self.failing = True

    def __call__(self, delivery: Delivery) -> Reply:
        return (200, {"status": "DROP"}) if self.failing else (200, None)


def deadletters_cli(sidecar: SidecarProcess, run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime", "deadletters", *args, "--app-id", sidecar.app_id],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "PILLION_RUN_DIR": str(run_dir)},
    )


def listed(client: httpx.Client, topic: str) -> list[dict[str, Any]]:
    response = client.get(f"{ADMIN}/pubsub/{topic}")
    assert response.status_code == 200, response.text
    messages: list[dict[str, Any]] = response.json()["messages"]
    return messages


@pytest.mark.parametrize("kind", LISTING)
def test_list_show_replay_and_purge(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    topic, dead = unique("orders"), unique("orders-dead")
    switch = Switch()
    app = SubscriberApp(
        [{"pubsubname": "pubsub", "topic": topic, "route": "/orders", "deadLetterTopic": dead}], switch
    )
    resources = {"pubsub.yaml": BROKERS[kind]("pubsub", tmp_path, service_url(request, kind), FAST_RETRIES)}
    run_dir = tmp_path / "run"
    app.start()
    try:
        with (
            running(tmp_path, app, resources, env={"PILLION_RUN_DIR": str(run_dir)}) as sidecar,
            sidecar.client() as client,
        ):
            for n in range(3):
                assert client.post(f"/v1.0/publish/pubsub/{topic}", json={"n": n}).status_code == 204
            app.wait_for(3, "/orders")
            deadline_messages: list[dict[str, Any]] = []
            for _ in range(100):
                deadline_messages = listed(client, dead)
                if len(deadline_messages) == 3:
                    break
                time.sleep(0.1)
            assert len(deadline_messages) == 3, deadline_messages
            first = deadline_messages[0]
            assert first["originalTopic"] == topic
            assert "DROP" in first["reason"] and first["appId"] == "subscriber"
            assert first["time"].endswith("Z") and first["eventId"]

            def data(message_id: str) -> Any:
                shown = client.get(f"{ADMIN}/pubsub/{dead}/messages/{message_id}").json()
                assert shown["cloudEvent"]["topic"] == topic
                assert shown["metadata"]["pillion-deadletter-topic"] == topic
                return shown["cloudEvent"]["data"]

            numbers = {m["id"]: data(m["id"]) for m in deadline_messages}
            assert sorted(n["n"] for n in numbers.values()) == [0, 1, 2]
            second, third = deadline_messages[1]["id"], deadline_messages[2]["id"]

            # Replay one: delivered on its original topic, gone from the dead-letter topic.
            switch.failing = False
            outcome = client.post(f"{ADMIN}/pubsub/{dead}/replay", json={"ids": [first["id"], "999-0"]})
            assert outcome.status_code == 200, outcome.text
            assert outcome.json() == {"done": [first["id"]], "missing": ["999-0"]}
            replayed = app.wait_for(4, "/orders")[-1]
            assert replayed.event["data"] == numbers[first["id"]]
            assert "pillion-deadletter-reason" not in replayed.headers
            assert [m["id"] for m in listed(client, dead)] == [second, third]

            # The CLI: list, show, purge one, then replay the rest.
            cli = deadletters_cli(sidecar, run_dir, "list", "--pubsub", "pubsub", "--topic", dead)
            assert cli.returncode == 0, cli.stderr
            assert second in cli.stdout and topic in cli.stdout
            cli = deadletters_cli(sidecar, run_dir, "show", "--pubsub", "pubsub", "--topic", dead, second)
            assert cli.returncode == 0 and json.loads(cli.stdout)["cloudEvent"]["data"] == numbers[second]
            cli = deadletters_cli(sidecar, run_dir, "purge", "--pubsub", "pubsub", "--topic", dead, second)
            assert cli.returncode == 0 and "1 purged" in cli.stdout, cli.stderr
            cli = deadletters_cli(sidecar, run_dir, "replay", "--pubsub", "pubsub", "--topic", dead, "--all")
            assert cli.returncode == 0, cli.stderr
            assert "1 replayed" in cli.stdout, cli.stdout
            assert app.wait_for(5, "/orders")[-1].event["data"] == numbers[third]
            assert listed(client, dead) == []
            time.sleep(0.5)
            assert len(app.received("/orders")) == 5  # the purged one never came back
            # Purge with no choice is refused rather than taken as "all".
            refused = client.post(f"{ADMIN}/pubsub/{dead}/purge", content=b"")
            assert refused.status_code == 400 and refused.json()["errorCode"] == "ERR_MALFORMED_REQUEST"
    finally:
        app.stop()


BROKEN_STORE = """
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: broken
spec:
  type: state.redis
  version: v1
  ignoreErrors: true
  metadata:
    - name: redisHost
      value: 127.0.0.1:1
"""


def test_a_broker_that_cannot_list_says_so_and_failed_components_show(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    app = SubscriberApp([])
    resources = {"pubsub.yaml": BROKERS["in-memory"]("pubsub", tmp_path, "", {}), "broken.yaml": BROKEN_STORE}
    app.start()
    try:
        with running(tmp_path, app, resources) as sidecar, sidecar.client() as client:
            answer = client.get(f"{ADMIN}/pubsub/dead")
            assert answer.status_code == 400
            assert answer.json()["errorCode"] == "ERR_DEADLETTERS_NOT_SUPPORTED"
            missing = client.get(f"{ADMIN}/nope/dead")
            assert missing.status_code == 404 and missing.json()["errorCode"] == "ERR_PUBSUB_NOT_FOUND"
            loaded, failed = client.get("/v1.0-alpha1/pillion/components").json()["components"]
            assert loaded["name"] == "pubsub" and loaded["status"] == "loaded"
            assert loaded["capabilities"] == ["SUBSCRIBE_WILDCARDS"]
            assert failed["name"] == "broken" and failed["status"] == "failed"
            assert failed["type"] == "state.redis" and "init failed" in failed["reason"]
    finally:
        app.stop()


def test_a_replay_whose_republish_fails_keeps_the_message(tmp_path: Path, redis_url: str) -> None:
    import redis

    topic, dead = unique("orders"), unique("orders-dead")
    app = SubscriberApp(
        [{"pubsubname": "pubsub", "topic": topic, "route": "/orders", "deadLetterTopic": dead}], Switch()
    )
    resources = {"pubsub.yaml": BROKERS["redis"]("pubsub", tmp_path, redis_url, FAST_RETRIES)}
    app.start()
    backend = redis.Redis.from_url(redis_url)
    try:
        with running(tmp_path, app, resources) as sidecar, sidecar.client() as client:
            assert client.post(f"/v1.0/publish/pubsub/{topic}", json={"n": 1}).status_code == 204
            for _ in range(100):
                if listed(client, dead):
                    break
                time.sleep(0.1)
            [letter] = listed(client, dead)
            # The original topic's key is no stream any more: XADD there fails.
            backend.delete(topic)
            backend.set(topic, "not a stream")
            failed = client.post(f"{ADMIN}/pubsub/{dead}/replay", json={"all": True})
            assert failed.status_code == 500, failed.text
            body = failed.json()
            assert body["errorCode"] == "ERR_DEADLETTERS_REPLAY" and body["done"] == []
            assert letter["id"] in body["message"] and topic in body["message"]
            assert [m["id"] for m in listed(client, dead)] == [letter["id"]]
            assert backend.xlen(dead) == 1
    finally:
        backend.delete(topic, dead)
        backend.close()
        app.stop()

"""Resiliency for component targets, and daprd's delivery default without one: state calls behind
a circuit breaker, pub/sub deliveries retried by an inbound policy, and a dead-letter topic used
after the first failed try when no policy applies."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.pubsub_support import Delivery, Reply, SubscriberApp, running, subscription
from tests.state_support import component
from tests.support import free_port, start_sidecar

RESILIENCY = """
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: components}
spec:
  policies:
    retries:
      twice: {policy: constant, duration: 20ms, maxRetries: 2}
    circuitBreakers:
      store: {maxRequests: 1, timeout: 30s, trip: consecutiveFailures >= 2}
  targets:
    components:
      statestore: {outbound: {circuitBreaker: store}}
      retried: {inbound: {retry: twice}}
"""


def _retry(delivery: Delivery) -> Reply:
    return 200, {"status": "RETRY"}


def test_a_dead_letter_topic_takes_the_message_after_one_failed_try(tmp_path: Path) -> None:
    app = SubscriberApp(
        [
            subscription("orders", "/orders", deadLetterTopic="orders-dead"),
            subscription("orders-dead", "/dead"),
        ],
        _retry,
    ).start()
    resources = {"pubsub.yaml": component("pubsub", "pubsub.in-memory", {})}
    try:
        with running(tmp_path, app, resources) as sidecar:
            marker = uuid.uuid4().hex
            assert httpx.post(f"{sidecar.url}/v1.0/publish/pubsub/orders", json=marker).status_code == 204
            app.wait_for(1, "/dead", where=lambda d: d.event["data"] == marker)
            time.sleep(0.3)
            tries = [d for d in app.received("/orders") if d.event["data"] == marker]
    finally:
        app.stop()
    assert len(tries) == 1


def test_an_inbound_policy_retries_deliveries(tmp_path: Path) -> None:
    app = SubscriberApp(
        [
            subscription("jobs", "/jobs", pubsub="retried", deadLetterTopic="jobs-dead"),
            subscription("jobs-dead", "/dead", pubsub="retried"),
        ],
        _retry,
    ).start()
    resources = {"pubsub.yaml": component("retried", "pubsub.in-memory", {}), "resiliency.yaml": RESILIENCY}
    try:
        with running(tmp_path, app, resources) as sidecar:
            marker = uuid.uuid4().hex
            assert httpx.post(f"{sidecar.url}/v1.0/publish/retried/jobs", json=marker).status_code == 204
            app.wait_for(1, "/dead", where=lambda d: d.event["data"] == marker)
            tries = [d for d in app.received("/jobs") if d.event["data"] == marker]
    finally:
        app.stop()
    assert len(tries) == 3  # one try and two retries


def test_a_state_store_behind_an_open_breaker_is_not_called(tmp_path: Path) -> None:
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is needed (Debian: apt-get install redis-server)")
    port = free_port()
    redis = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        store = component("statestore", "state.redis", {"redisHost": f"127.0.0.1:{port}", "maxRetries": "-1"})
        sidecar = start_sidecar(
            tmp_path, "breaker", {"statestore.yaml": store, "resiliency.yaml": RESILIENCY}
        )
        try:
            with sidecar.client() as client:
                assert (
                    client.post("/v1.0/state/statestore", json=[{"key": "k", "value": 1}]).status_code == 204
                )
                redis.kill()
                redis.wait()
                failures = [client.get("/v1.0/state/statestore/k") for _ in range(2)]
                opened = client.get("/v1.0/state/statestore/k")
        finally:
            sidecar.stop()
    finally:
        redis.kill()
        redis.wait()
    for failed in failures:
        assert failed.status_code == 500 and "circuit breaker" not in failed.text
    assert opened.status_code == 500
    assert opened.json()["errorCode"] == "ERR_STATE_GET"
    assert "circuit breaker is open" in opened.json()["message"]

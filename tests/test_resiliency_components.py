"""Resiliency for component targets, and daprd's delivery default without one: state calls behind
a circuit breaker, pub/sub deliveries retried by an inbound policy, publishes (dead-letter
republishing too) under an outbound breaker, retries and timeout, and a dead-letter topic used
after the first failed try when no policy applies."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.private_redis import PrivateRedis
from tests.pubsub_support import Delivery, Reply, SubscriberApp, running, subscription
from tests.state_support import component
from tests.support import SidecarProcess, free_port, start_sidecar

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


# Publishing to a private Redis the tests stop: the component itself never retries (maxRetries -1)
# and would wait 10 s for a reply, so whatever is retried, cut short or refused is the policy's doing.
OUTBOUND = """
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: publishing}
spec:
  policies:
    timeouts:
      short: 300ms
    retries:
      patient: {policy: constant, duration: 200ms, maxRetries: 20}
    circuitBreakers:
      publisher: {maxRequests: 1, timeout: 2s, trip: consecutiveFailures >= 2}
  targets:
    components:
      broken: {outbound: {circuitBreaker: publisher}}
      retried: {outbound: {retry: patient}}
      bounded: {outbound: {timeout: short}}
      letters: {outbound: {retry: patient}}
"""
BREAKER_TIMEOUT = 2.0


def _redis_server(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """A redis-server of the test's own on ``port`` (again on the same port after a kill), ready."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is needed (Debian: apt-get install redis-server)")
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    try:
        while True:
            try:
                client.ping()
                return proc
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    _kill(proc)
                    pytest.fail(f"redis-server did not start on port {port}")
                time.sleep(0.05)
    finally:
        client.close()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)  # a stopped process dies only once it runs again
        proc.kill()
    proc.wait()


def _pubsub(name: str, port: int, **metadata: str) -> str:
    return component(name, "pubsub.redis", {"redisHost": f"127.0.0.1:{port}", "maxRetries": "-1", **metadata})


def _published(port: int, topic: str, marker: str) -> bool:
    """Whether the stream of ``topic`` holds the event whose data is ``marker``."""
    client = redis.Redis(port=port)
    try:
        entries: Any = client.xrange(topic)  # redis-py types the answer loosely
        return any(marker.encode() in fields[b"data"] for _, fields in entries)
    finally:
        client.close()


def _publish(sidecar: SidecarProcess, pubsub: str, marker: str, topic: str = "orders") -> httpx.Response:
    return httpx.post(f"{sidecar.url}/v1.0/publish/{pubsub}/{topic}", json=marker, timeout=30)


def test_an_outbound_breaker_stops_publishing_and_closes_again(tmp_path: Path) -> None:
    port = free_port()
    server = _redis_server(port, tmp_path / "redis")
    resources = {"pubsub.yaml": _pubsub("broken", port), "resiliency.yaml": OUTBOUND}
    try:
        sidecar = start_sidecar(tmp_path, "breaker", resources)
        try:
            assert _publish(sidecar, "broken", "before").status_code == 204
            _kill(server)
            failures = [_publish(sidecar, "broken", f"failed-{n}") for n in range(2)]
            opened = _publish(sidecar, "broken", "refused")
            opened_at = time.monotonic()
            # Redis is back, but the open breaker does not call it before its timeout.
            server = _redis_server(port, tmp_path / "redis")
            still_open = _publish(sidecar, "broken", "still-refused")
            assert time.monotonic() - opened_at < BREAKER_TIMEOUT, "too slow to see the breaker open"
            time.sleep(max(0.0, opened_at + BREAKER_TIMEOUT + 0.5 - time.monotonic()))
            closed = [_publish(sidecar, "broken", f"after-{n}") for n in range(3)]
        finally:
            sidecar.stop()
        for failed in failures:
            assert failed.status_code == 500, failed.text
            assert failed.json()["errorCode"] == "ERR_PUBSUB_PUBLISH_MESSAGE"
            assert "circuit breaker" not in failed.text
        for refused in (opened, still_open):
            assert refused.status_code == 500, refused.text
            assert refused.json()["errorCode"] == "ERR_PUBSUB_PUBLISH_MESSAGE"
            assert refused.json()["message"] == (
                "error when publishing to topic orders in pubsub broken: circuit breaker is open"
            )
        assert [r.status_code for r in closed] == [204, 204, 204]
        assert not _published(port, "orders", "still-refused")
        assert all(_published(port, "orders", f"after-{n}") for n in range(3))
    finally:
        _kill(server)


def test_an_outbound_retry_policy_publishes_once_the_broker_is_back(tmp_path: Path) -> None:
    port = free_port()
    server = _redis_server(port, tmp_path / "redis")
    resources = {
        "retried.yaml": _pubsub("retried", port),
        "plain.yaml": _pubsub("plain", port),
        "resiliency.yaml": OUTBOUND,
    }
    restarted: list[subprocess.Popen[bytes]] = []
    try:
        sidecar = start_sidecar(tmp_path, "retries", resources, extra_args=["--log-level", "debug"])
        try:
            _kill(server)
            # The same broker without a policy: the publish fails at once.
            unprotected = _publish(sidecar, "plain", "plain")

            def restart() -> None:
                # Redis comes back only once the publish has failed at least once and waits to retry.
                deadline = time.monotonic() + 20
                while "retrying in 0.20s after" not in sidecar.log() and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(0.3)
                restarted.append(_redis_server(port, tmp_path / "redis"))

            thread = threading.Thread(target=restart)
            thread.start()
            started = time.monotonic()
            try:
                retried = _publish(sidecar, "retried", "retried")
            finally:
                thread.join()
            took = time.monotonic() - started
        finally:
            sidecar.stop()
        assert unprotected.status_code == 500, unprotected.text
        assert unprotected.json()["errorCode"] == "ERR_PUBSUB_PUBLISH_MESSAGE"
        assert retried.status_code == 204, retried.text
        assert took >= 0.3
        assert restarted and _published(port, "orders", "retried")
    finally:
        _kill(server)
        for proc in restarted:
            _kill(proc)


def test_an_outbound_timeout_ends_a_publish_the_broker_does_not_answer(tmp_path: Path) -> None:
    port = free_port()
    server = _redis_server(port, tmp_path / "redis")
    resources = {"pubsub.yaml": _pubsub("bounded", port, readTimeout="10s"), "resiliency.yaml": OUTBOUND}
    try:
        sidecar = start_sidecar(tmp_path, "timeout", resources)
        try:
            assert _publish(sidecar, "bounded", "before").status_code == 204
            server.send_signal(signal.SIGSTOP)  # Redis keeps the connection but answers nothing
            started = time.monotonic()
            answer = _publish(sidecar, "bounded", "unanswered")
            took = time.monotonic() - started
        finally:
            sidecar.stop()
    finally:
        _kill(server)
    assert answer.status_code == 500, answer.text
    assert answer.json()["errorCode"] == "ERR_PUBSUB_PUBLISH_MESSAGE"
    assert answer.json()["message"] == (
        "error when publishing to topic orders in pubsub bounded: context deadline exceeded"
    )
    assert took < 5  # the policy's 300 ms, not the component's 10 s readTimeout


def test_dead_letter_republishing_follows_the_outbound_policy(tmp_path: Path) -> None:
    broker = PrivateRedis(tmp_path / "redis")
    # The dead-letter topic's key holds a string: XADD to it fails (WRONGTYPE) until it is deleted.
    broker.client.set("jobs-dead", "not a stream")
    app = SubscriberApp(
        [subscription("jobs", "/jobs", pubsub="letters", deadLetterTopic="jobs-dead")], _retry
    ).start()
    resources = {"pubsub.yaml": _pubsub("letters", broker.port), "resiliency.yaml": OUTBOUND}
    try:
        with running(tmp_path, app, resources, extra_args=["--log-level", "debug"]) as sidecar:
            marker = uuid.uuid4().hex
            assert _publish(sidecar, "letters", marker, "jobs").status_code == 204
            app.wait_for(1, "/jobs", where=lambda d: d.event["data"] == marker)
            deadline = time.monotonic() + 20
            while "retrying in 0.20s after server:ResponseError" not in sidecar.log():
                assert time.monotonic() < deadline, "the dead-letter republish was not retried"
                time.sleep(0.05)
            broker.client.delete("jobs-dead")
            deadline = time.monotonic() + 15
            while not _published(broker.port, "jobs-dead", marker):
                assert time.monotonic() < deadline, "the message did not reach the dead-letter topic"
                time.sleep(0.05)
    finally:
        app.stop()
        broker.stop()

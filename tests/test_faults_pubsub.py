"""Pub/sub faults with real processes (issue 7): the publishing sidecar killed under load, and a
subscriber app that hangs."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from tests.pubsub_support import BROKERS, Delivery, Reply, SubscriberApp, running, service_url, subscription
from tests.support import start_sidecar

PUBLISHERS = 8


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_sigkill_of_the_publisher_loses_no_acknowledged_publish(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    topic = f"acked-{uuid.uuid4().hex[:8]}"
    resources = {"pubsub.yaml": BROKERS[kind]("pubsub", tmp_path, service_url(request, kind), {})}
    app = SubscriberApp([subscription(topic, "/in")]).start()
    acknowledged: set[int] = set()
    lock = threading.Lock()
    try:
        with running(tmp_path / "subscriber", app, resources, app_id="reader"):
            publisher = start_sidecar(tmp_path / "publisher", app_id="writer", resources=resources)
            stop = threading.Event()

            def publish(worker: int) -> None:
                n = worker
                with httpx.Client(base_url=publisher.url, timeout=5) as client:
                    while not stop.is_set():
                        try:
                            response = client.post(f"/v1.0/publish/pubsub/{topic}", json={"n": n})
                        except httpx.TransportError:
                            return  # the sidecar is gone: this publish was never acknowledged
                        if response.status_code == 204:
                            with lock:
                                acknowledged.add(n)
                        n += PUBLISHERS

            with ThreadPoolExecutor(PUBLISHERS) as pool:
                for worker in range(PUBLISHERS):
                    pool.submit(publish, worker)
                deadline = time.monotonic() + 20
                while len(acknowledged) < 300:
                    assert time.monotonic() < deadline, "publishing did not get going"
                    time.sleep(0.01)
                publisher.kill()  # mid-load: requests are in flight right now
                stop.set()
            assert acknowledged
            deadline = time.monotonic() + 30
            while not acknowledged <= (got := {d.event["data"]["n"] for d in app.received("/in")}):
                assert time.monotonic() < deadline, (
                    f"acknowledged but lost: {sorted(acknowledged - got)[:20]}"
                )
                time.sleep(0.05)
    finally:
        app.stop()


def test_a_hanging_subscriber_does_not_stick_its_topic(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    hung, healthy = f"hung-{uuid.uuid4().hex[:8]}", f"fine-{uuid.uuid4().hex[:8]}"
    release = threading.Event()

    def answer(delivery: Delivery) -> Reply:
        if delivery.path == "/hang":
            release.wait(30)  # an app that never answers (until the test ends)
        return 200, None

    app = SubscriberApp(
        [
            subscription(hung, "/hang", deadLetterTopic="dead"),
            subscription(healthy, "/ok"),
            subscription("dead", "/dead"),
        ],
        answer,
    ).start()
    delivery = {"deliveryTimeout": "300ms", "deliveryMaxAttempts": "2", "deliveryRetryInterval": "50ms"}
    resources = {
        "pubsub.yaml": BROKERS["sqlite"]("pubsub", tmp_path, service_url(request, "sqlite"), delivery)
    }
    try:
        with running(tmp_path / "sidecar", app, resources) as sidecar, sidecar.client() as client:
            process = psutil.Process(sidecar.proc.pid)
            for n in range(20):
                assert client.post(f"/v1.0/publish/pubsub/{hung}", json={"n": n}).status_code == 204
                assert client.post(f"/v1.0/publish/pubsub/{healthy}", json={"n": n}).status_code == 204
            # The healthy topic flows while the other one hangs.
            app.wait_for(20, "/ok", timeout=20)
            # Each hung message times out, is tried again, then goes to the dead-letter topic.
            app.wait_for(20, "/dead", timeout=60)
            assert {d.event["data"]["n"] for d in app.received("/dead")} == set(range(20))
            assert process.memory_info().rss < 200 * 2**20
            assert sidecar.proc.poll() is None
    finally:
        release.set()
        app.stop()

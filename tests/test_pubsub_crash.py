"""SIGKILL of a sidecar in the middle of delivery, on the shared brokers in CRASH_TESTED.

Two sidecars of one app share a topic while the app is slow; one is SIGKILLed mid-way and then
restarted in the same place. Every message must arrive at least once. Only messages the killed
sidecar had handed to the app, and not yet acknowledged, may arrive twice. Last, both sidecars are
restarted: a message that was acknowledged never comes back.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.pubsub_support import (
    BROKERS,
    CRASH_TESTED,
    Delivery,
    Reply,
    SubscriberApp,
    running,
    service_url,
    subscription,
)

TOTAL = 200
CONCURRENCY = 10
# JetStream hands out the killed sidecar's messages again once their ackWait has run out.
FAST = {"jetstream": {"ackWait": "1s"}}


@pytest.mark.parametrize("kind", sorted(CRASH_TESTED))
def test_sigkill_of_one_sidecar_loses_nothing(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    topic = f"crash-{uuid.uuid4().hex[:8]}"
    published = threading.Event()

    def slow(delivery: Delivery) -> Reply:
        published.wait(30)  # hold the first deliveries until everything is published
        time.sleep(0.1)
        return 200, None

    app = SubscriberApp([subscription(topic, "/work")], slow).start()
    metadata = {"concurrency": str(CONCURRENCY), **FAST.get(kind, {})}
    resources = {"pubsub.yaml": BROKERS[kind]("pubsub", tmp_path, service_url(request, kind), metadata)}

    def numbers() -> list[int]:
        return [d.event["data"]["n"] for d in app.received("/work")]

    try:
        with running(tmp_path / "survivor", app, resources, app_id="worker"):
            with running(tmp_path / "victim", app, resources, app_id="worker") as victim:
                with victim.client() as client:
                    for n in range(TOTAL):
                        response = client.post(f"/v1.0/publish/pubsub/{topic}", json={"n": n})
                        assert response.status_code == 204
                published.set()
                app.wait_for(TOTAL // 4, "/work")
                victim.stop(signal.SIGKILL)
            delivered_before_kill = len(app.received("/work"))
            assert delivered_before_kill < TOTAL, "the kill came too late to test anything"
            with running(tmp_path / "victim", app, resources, app_id="worker"):
                deadline = time.monotonic() + 30
                while len(set(numbers())) < TOTAL:
                    assert time.monotonic() < deadline, f"lost: {sorted(set(range(TOTAL)) - set(numbers()))}"
                    time.sleep(0.05)
        counts = Counter(numbers())
        duplicates = sum(counts.values()) - TOTAL
        print(f"{kind}: delivered before the kill: {delivered_before_kill}; duplicates: {duplicates}")
        assert set(counts) == set(range(TOTAL))
        assert duplicates <= CONCURRENCY
        # Everything delivered was acknowledged: sidecars starting again get nothing more.
        seen = len(app.received("/work"))
        with (
            running(tmp_path / "survivor", app, resources, app_id="worker"),
            running(tmp_path / "victim", app, resources, app_id="worker"),
        ):
            time.sleep(1.5)
        assert len(app.received("/work")) == seen
    finally:
        app.stop()

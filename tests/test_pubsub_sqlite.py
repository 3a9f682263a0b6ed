"""``pubsub.sqlite``: durability (SIGKILL mid-delivery), broker failures, the embedded default."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.pubsub_support import Delivery, Reply, SubscriberApp, running, sqlite, subscription
from tests.support import start_sidecar


def publish(url: str, topic: str, data: object, client: httpx.Client | None = None) -> None:
    response = (client or httpx).post(f"{url}/v1.0/publish/pubsub/{topic}", json=data)
    assert response.status_code == 204, response.text


def test_sigkill_mid_delivery_loses_nothing(tmp_path: Path) -> None:
    """Publish 200 while the app is slow, SIGKILL the sidecar mid-way, restart it: every message
    arrives at least once. Duplicates are allowed (at-least-once) and counted."""
    total = 200

    def slow(delivery: Delivery) -> Reply:
        time.sleep(0.1)  # ten at a time: 2 s for all of them
        return 200, None

    app = SubscriberApp([subscription("work", "/work")], slow).start()
    resources = {"pubsub.yaml": sqlite("pubsub", tmp_path, "", {"leaseDuration": "1s"})}
    try:
        with running(tmp_path, app, resources) as sidecar, sidecar.client() as client:
            for n in range(total):
                publish(sidecar.url, "work", {"n": n}, client)
            app.wait_for(total // 4, "/work")
            sidecar.stop(signal.SIGKILL)
        delivered_before_kill = len(app.received("/work"))
        assert delivered_before_kill < total, "the kill came too late to test anything"
        with running(tmp_path, app, resources):
            deadline = time.monotonic() + 30
            while len({d.event["data"]["n"] for d in app.received("/work")}) < total:
                assert time.monotonic() < deadline, "messages were lost"
                time.sleep(0.05)
            counts = Counter(d.event["data"]["n"] for d in app.received("/work"))
            duplicates = sum(counts.values()) - total
            print(f"delivered before the kill: {delivered_before_kill}; duplicates: {duplicates}")
            assert set(counts) == set(range(total))
            # Only messages in flight at the kill (concurrency 10) can come twice.
            assert duplicates <= 20
            # Everything acknowledged is gone from the file.
            deadline = time.monotonic() + 5
            while _rows(tmp_path / "pubsub.db", "pubsub_messages") or _rows(
                tmp_path / "pubsub.db", "pubsub_pending"
            ):
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        app.stop()


def _rows(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        count: int = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    return count


def test_messages_wait_for_a_subscriber_that_starts_later(tmp_path: Path) -> None:
    resources = {"pubsub.yaml": sqlite("pubsub", tmp_path, "", {})}
    publisher = start_sidecar(tmp_path / "first", app_id="orders", resources=resources)
    try:
        for n in range(5):
            publish(publisher.url, "later", {"n": n})
    finally:
        assert publisher.stop() == 0
    app = SubscriberApp([subscription("later", "/later")]).start()
    try:
        with running(tmp_path / "second", app, resources, app_id="orders"):
            got = app.wait_for(5, "/later")
            assert sorted(d.event["data"]["n"] for d in got) == list(range(5))
    finally:
        app.stop()


def test_graceful_stop_lets_the_delivery_in_flight_finish(tmp_path: Path) -> None:
    finished: list[str] = []

    def slow(delivery: Delivery) -> Reply:
        time.sleep(1.0)
        finished.append(delivery.event["data"])
        return 200, None

    app = SubscriberApp([subscription("slow", "/slow")], slow).start()
    resources = {"pubsub.yaml": sqlite("pubsub", tmp_path, "", {})}
    try:
        with running(tmp_path, app, resources) as sidecar:
            publish(sidecar.url, "slow", "once")
            app.wait_for(1, "/slow")
            assert sidecar.stop() == 0
            assert finished == ["once"]
        # Acknowledged before the broker closed: a restart does not bring it back.
        with running(tmp_path, app, resources) as sidecar:
            publish(sidecar.url, "slow", "fence")
            app.wait_for(2, "/slow")
            assert [d.event["data"] for d in app.received("/slow")] == ["once", "fence"]
    finally:
        app.stop()


def test_a_broker_failure_is_500_and_bulk_reports_every_failed_entry(tmp_path: Path) -> None:
    resources = {"pubsub.yaml": sqlite("pubsub", tmp_path, "", {"busyTimeout": "50ms"})}
    sidecar = start_sidecar(tmp_path, resources=resources)
    try:
        publish(sidecar.url, "t", "ready")
        lock = sqlite3.connect(tmp_path / "pubsub.db", isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            single = httpx.post(f"{sidecar.url}/v1.0/publish/pubsub/t", json=1)
            entries = [{"entryId": str(i), "event": i, "contentType": "application/json"} for i in range(3)]
            bulk = httpx.post(f"{sidecar.url}/v1.0-alpha1/publish/bulk/pubsub/t", json=entries)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert single.status_code == 500
        assert single.json()["errorCode"] == "ERR_PUBSUB_PUBLISH_MESSAGE"
        assert (
            single.json()["message"]
            == "error when publishing to topic t in pubsub pubsub: database is locked"
        )
        assert bulk.status_code == 500
        answer = bulk.json()
        assert answer == {
            "failedEntries": [{"entryId": str(i), "error": "database is locked"} for i in range(3)],
            "errorCode": "ERR_PUBSUB_PUBLISH_MESSAGE",
        }
        assert json.loads(bulk.headers["metadata.responseData"]) == answer
        assert (
            bulk.headers["metadata.error"]
            == "error when publishing to topic t in pubsub pubsub: database is locked"
        )
        publish(sidecar.url, "t", "works again")
    finally:
        sidecar.stop()


def test_the_embedded_default_is_a_durable_sqlite_pubsub(tmp_path: Path) -> None:
    app = SubscriberApp([subscription("hello", "/hello")]).start()
    try:
        sidecar = start_sidecar(
            tmp_path, app_id="plain", extra_args=["--app-port", str(app.port)], wait_path="/v1.0/healthz"
        )
        try:
            components = httpx.get(sidecar.url + "/v1.0/metadata").json()["components"]
            assert {
                "name": "pubsub",
                "type": "pubsub.sqlite",
                "version": "v1",
                "capabilities": ["MESSAGE_TTL", "RETAINED_MESSAGES"],
            } in (components)
            publish(sidecar.url, "hello", "world")
            assert app.wait_for(1, "/hello")[0].event["data"] == "world"
            assert (sidecar.data_dir / "pubsub.db").is_file()
        finally:
            sidecar.stop()
    finally:
        app.stop()

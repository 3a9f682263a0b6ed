"""Pub/sub in the sidecar's life: start-up checks of subscriptions, waiting for the app's port,
and several sidecars sharing one broker (fan-out across app ids, competing consumers)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.pubsub_support import (
    BROKERS,
    FAST_RETRIES,
    SHARED_BROKERS,
    Delivery,
    Reply,
    SubscriberApp,
    in_memory,
    running,
    service_url,
    sqlite,
    subscription,
)
from tests.support import free_port, run_sidecar_to_exit, start_sidecar, write_resources

BAD_RULE = """apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {name: broken-rule}
spec:
  pubsubname: pubsub
  topic: orders
  routes:
    rules: [{match: 'event.type ==', path: /x}]
"""


def test_a_declarative_rule_that_does_not_compile_stops_start_up(tmp_path: Path) -> None:
    folder = write_resources(
        tmp_path / "res", {"pubsub.yaml": in_memory("pubsub", tmp_path, "", {}), "sub.yaml": BAD_RULE}
    )
    result = run_sidecar_to_exit(
        tmp_path, ["--app-id", "a", "--resources-path", str(folder), "--dapr-http-port", str(free_port())]
    )
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("pillion:")]
    assert (
        "sub.yaml: subscription 'broken-rule': routing rule 0 match 'event.type ==' does not compile" in line
    )
    assert "Traceback" not in result.stderr


def test_a_programmatic_rule_that_does_not_compile_stops_the_sidecar(tmp_path: Path) -> None:
    app = SubscriberApp([subscription("orders", routes={"rules": [{"match": "event.data >", "path": "/x"}]})])
    app.start()
    try:
        folder = write_resources(tmp_path / "res", {"pubsub.yaml": in_memory("pubsub", tmp_path, "", {})})
        args = ["--app-id", "a", "--resources-path", str(folder), "--app-port", str(app.port)]
        result = run_sidecar_to_exit(tmp_path, [*args, "--dapr-http-port", str(free_port())])
    finally:
        app.stop()
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("pillion:")]
    assert "GET /dapr/subscribe: subscription pubsub/orders: routing rule 0 match 'event.data >'" in line
    assert "Traceback" not in result.stderr


def test_deliveries_wait_while_the_app_port_is_closed(tmp_path: Path) -> None:
    """Neither a late app nor an app that restarts costs a message its tries (only one is allowed)."""
    port = free_port()
    resources = {"pubsub.yaml": sqlite("pubsub", tmp_path, "", {**FAST_RETRIES, "deliveryMaxAttempts": "1"})}
    sidecar = start_sidecar(
        tmp_path, app_id="late", resources=resources, extra_args=["--app-port", str(port)]
    )
    try:
        assert httpx.get(sidecar.url + "/v1.0/healthz").status_code == 500  # waiting for the app
        assert httpx.post(sidecar.url + "/v1.0/publish/pubsub/early", json="first").status_code == 204
        time.sleep(0.5)
        app = SubscriberApp([subscription("early", "/early")], port=port).start()
        try:
            assert app.wait_for(1, "/early")[0].event["data"] == "first"
        finally:
            app.stop()
        assert httpx.post(sidecar.url + "/v1.0/publish/pubsub/early", json="second").status_code == 204
        time.sleep(0.5)
        app = SubscriberApp([], port=port).start()
        try:
            assert app.wait_for(1, "/early")[0].event["data"] == "second"
        finally:
            app.stop()
        assert "app is not reachable" in sidecar.log()
    finally:
        sidecar.stop()


SHARED = sorted(name for name in BROKERS if name in SHARED_BROKERS)


def _shared_resources(request: pytest.FixtureRequest, kind: str, workdir: Path) -> dict[str, str]:
    return {"pubsub.yaml": BROKERS[kind]("pubsub", workdir, service_url(request, kind), {})}


@pytest.mark.parametrize("kind", SHARED)
def test_different_app_ids_each_get_every_message(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    topic = f"fanout-{time.monotonic_ns()}"
    resources = _shared_resources(request, kind, tmp_path)
    apps = [SubscriberApp([subscription(topic, "/in")]).start() for _ in range(2)]
    try:
        with (
            running(tmp_path / "a", apps[0], resources, app_id="billing") as billing,
            running(tmp_path / "b", apps[1], resources, app_id="shipping"),
        ):
            for n in range(10):
                assert httpx.post(f"{billing.url}/v1.0/publish/pubsub/{topic}", json=n).status_code == 204
            for app in apps:
                got = app.wait_for(10, "/in")
                assert sorted(d.event["data"] for d in got) == list(range(10))
    finally:
        for app in apps:
            app.stop()


@pytest.mark.parametrize("kind", SHARED)
def test_sidecars_of_one_app_share_the_work(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    topic = f"shared-{time.monotonic_ns()}"
    resources = _shared_resources(request, kind, tmp_path)

    def busy(delivery: Delivery) -> Reply:
        time.sleep(0.05)  # keeps the first sidecar's ten slots full, so the other one must help
        return 200, None

    apps = [SubscriberApp([subscription(topic, "/in")], busy).start() for _ in range(2)]
    total = 60
    try:
        with (
            running(tmp_path / "a", apps[0], resources, app_id="worker") as first,
            running(tmp_path / "b", apps[1], resources, app_id="worker"),
            first.client() as client,
        ):
            for n in range(total):
                assert client.post(f"/v1.0/publish/pubsub/{topic}", json=n).status_code == 204
            deadline = time.monotonic() + 20
            while len({d.event["data"] for app in apps for d in app.received("/in")}) < total:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            time.sleep(0.3)
            counts = Counter(d.event["data"] for app in apps for d in app.received("/in"))
            assert set(counts) == set(range(total))
            assert max(counts.values()) == 1  # nothing was handed to both
            assert all(app.received("/in") for app in apps)  # and both took a share
    finally:
        for app in apps:
            app.stop()

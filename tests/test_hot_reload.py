"""Hot reload: component and subscription files added, changed or removed while the sidecar runs
take effect without a restart; a broken edit is refused with one log line and the old definitions
keep serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.app_process import AppProcess, wait_until
from tests.state_support import component
from tests.support import SidecarProcess, start_sidecar


def components(sidecar: SidecarProcess) -> dict[str, str]:
    with sidecar.client() as client:
        listed: list[dict[str, Any]] = client.get("/v1.0/metadata").json().get("components", [])
    return {c["name"]: c["type"] for c in listed}


def wait_for_log(sidecar: SidecarProcess, text: str, count: int = 1) -> None:
    wait_until(lambda: sidecar.log().count(text) >= count, what=f"log line {text!r}")


def save(client: httpx.Client, store: str, key: str, value: str) -> httpx.Response:
    return client.post(f"/v1.0/state/{store}", json=[{"key": key, "value": value}])


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[SidecarProcess]:
    running = start_sidecar(
        tmp_path,
        resources={
            "first.yaml": component("first", "state.sqlite", {"connectionString": str(tmp_path / "s.db")})
        },
    )
    yield running
    running.stop()


def test_a_store_added_changed_and_removed(sidecar: SidecarProcess, tmp_path: Path) -> None:
    folder = tmp_path / "resources"
    with sidecar.client() as client:
        (folder / "second.yaml").write_text(component("second", "state.in-memory", {}))
        wait_until(lambda: "second" in components(sidecar), what="second in metadata")
        assert save(client, "second", "k", "v").status_code == 204
        assert client.get("/v1.0/state/second/k").json() == "v"
        wait_for_log(sidecar, "resources reloaded: added state second")

        # keyPrefix is read again: the key saved under "testapp||k" is not found as "k".
        assert save(client, "first", "k", "kept").status_code == 204
        db = str(tmp_path / "s.db")
        (folder / "first.yaml").write_text(
            component("first", "state.sqlite", {"connectionString": db, "keyPrefix": "none"})
        )
        wait_for_log(sidecar, "resources reloaded: changed state first")
        assert client.get("/v1.0/state/first/k").status_code == 204
        (folder / "first.yaml").write_text(component("first", "state.sqlite", {"connectionString": db}))
        wait_for_log(sidecar, "resources reloaded: changed state first", 2)
        assert client.get("/v1.0/state/first/k").json() == "kept"

        (folder / "second.yaml").unlink()
        wait_for_log(sidecar, "resources reloaded: removed state second")
        answer = client.get("/v1.0/state/second/k")
        assert answer.status_code == 400
        assert answer.json()["errorCode"] == "ERR_STATE_STORE_NOT_FOUND"
        assert "second" not in components(sidecar)
        # "first" started three times (start, two changes); "second" was never started again.
        assert sidecar.log().count("component first (state.sqlite) is ready") == 3
        assert sidecar.log().count("component second (state.in-memory) is ready") == 1
    sidecar.stop()
    # The replaced instances, still in their grace period, were closed cleanly on the way out.
    assert "closing component" not in sidecar.log()
    assert "pillion stopped" in sidecar.log()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: first\n", "invalid YAML"),
        (
            component("first", "state.nosuchstore", {}),
            "component 'first': unknown spec.type 'state.nosuchstore'",
        ),
        (component("first", "state.sqlite", {"busyTimeout": "soon"}), "component 'first': "),
    ],
    ids=["invalid-yaml", "unknown-type", "bad-metadata"],
)
def test_a_broken_edit_keeps_the_old_definition(
    sidecar: SidecarProcess, tmp_path: Path, text: str, problem: str
) -> None:
    folder = tmp_path / "resources"
    with sidecar.client() as client:
        assert save(client, "first", "k", "before").status_code == 204
        (folder / "first.yaml").write_text(text)
        wait_for_log(sidecar, "resources not reloaded: ")
        line = next(x for x in sidecar.log().splitlines() if "resources not reloaded: " in x)
        assert f"{folder / 'first.yaml'}: {problem}" in line
        assert line.endswith("; the running definitions stay in use")
        assert client.get("/v1.0/state/first/k").json() == "before"
        assert components(sidecar) == {"first": "state.sqlite"}


def test_a_component_that_fails_to_start_keeps_the_old_one(sidecar: SidecarProcess, tmp_path: Path) -> None:
    folder = tmp_path / "resources"
    (tmp_path / "a-file").write_text("not a folder")
    with sidecar.client() as client:
        assert save(client, "first", "k", "before").status_code == 204
        unusable = str(tmp_path / "a-file" / "s.db")
        (folder / "first.yaml").write_text(component("first", "state.sqlite", {"connectionString": unusable}))
        wait_for_log(sidecar, "resources not reloaded: ")
        assert "component 'first': init failed" in sidecar.log()
        assert client.get("/v1.0/state/first/k").json() == "before"


def test_subscriptions_start_and_change_with_their_files(tmp_path: Path) -> None:
    app = AppProcess(tmp_path, [])
    sidecar = start_sidecar(
        tmp_path,
        app_id="reloading",
        resources={"state.yaml": component("statestore", "state.in-memory", {})},
        extra_args=["--app-port", str(app.port)],
        wait_path="/v1.0/healthz",
    )
    folder = tmp_path / "resources"
    subscription = (
        "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata: {name: orders}\n"
        "spec: {pubsubname: pubsub, topic: orders, routes: {default: /ROUTE}}\n"
    )
    try:
        with sidecar.client() as client:
            # A pubsub and a subscription where there was neither: delivery starts.
            (folder / "pubsub.yaml").write_text(component("pubsub", "pubsub.in-memory", {}))
            (folder / "subscription.yaml").write_text(subscription.replace("ROUTE", "first-route"))
            wait_until(lambda: "subscription pubsub/orders delivers to /first-route" in sidecar.log())
            assert client.post("/v1.0/publish/pubsub/orders", content="one").status_code == 204
            assert app.wait_for(1, "/first-route")[0].event["data"] == "one"

            (folder / "subscription.yaml").write_text(subscription.replace("ROUTE", "second-route"))
            wait_until(lambda: "subscription pubsub/orders delivers to /second-route" in sidecar.log())
            assert client.post("/v1.0/publish/pubsub/orders", content="two").status_code == 204
            assert app.wait_for(1, "/second-route")[0].event["data"] == "two"
            listed = client.get("/v1.0/metadata").json()["subscriptions"]
            assert [s["rules"] for s in listed] == [[{"path": "/second-route"}]]

            # Replacing the pubsub restarts the subscriptions on it.
            (folder / "pubsub.yaml").write_text(
                component("pubsub", "pubsub.in-memory", {"deliveryMaxAttempts": "2"})
            )
            wait_until(lambda: sidecar.log().count("delivers to /second-route") == 2, what="a restart")
            assert client.post("/v1.0/publish/pubsub/orders", content="three").status_code == 204
            assert [d.event["data"] for d in app.wait_for(2, "/second-route")] == ["two", "three"]

            (folder / "subscription.yaml").unlink()
            wait_until(lambda: "subscriptions" not in client.get("/v1.0/metadata").json())
    finally:
        sidecar.stop()
        app.stop()


def test_a_kubernetes_configmap_update_is_picked_up(tmp_path: Path) -> None:
    """A ConfigMap volume swaps its `..data` link to a new folder; the file names stay links."""
    folder = tmp_path / "configmap"
    (folder / "..v1").mkdir(parents=True)
    (folder / "..v1" / "store.yaml").write_text(component("first", "state.in-memory", {}))
    (folder / "..data").symlink_to("..v1")
    (folder / "store.yaml").symlink_to("..data/store.yaml")
    sidecar = start_sidecar(tmp_path, extra_args=["--resources-path", str(folder)])
    try:
        assert components(sidecar) == {"first": "state.in-memory"}
        (folder / "..v2").mkdir()
        (folder / "..v2" / "store.yaml").write_text(component("second", "state.in-memory", {}))
        (folder / "..data_tmp").symlink_to("..v2")
        (folder / "..data_tmp").replace(folder / "..data")
        wait_until(lambda: components(sidecar) == {"second": "state.in-memory"}, what="the swap")
    finally:
        sidecar.stop()

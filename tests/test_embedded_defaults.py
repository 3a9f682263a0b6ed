"""The embedded default components are shared by every app of one user (issue 16, part 1)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import httpx

from runtime.lifecycle.embedded import MOVED_SUFFIX
from tests.app_process import AppProcess
from tests.support import SidecarProcess, start_sidecar

SUBSCRIPTIONS = [{"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}]


def shared(tmp_path: Path, app_id: str, home: Path, extra: list[str] | None = None) -> SidecarProcess:
    return start_sidecar(
        tmp_path / app_id, app_id=app_id, extra_args=extra, env={"HOME": str(home)}, isolated=False
    )


def test_two_apps_started_together_share_pubsub_and_state_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    subscriber = AppProcess(tmp_path, SUBSCRIPTIONS)
    started: dict[str, SidecarProcess] = {}
    errors: list[BaseException] = []

    def launch(app_id: str, extra: list[str] | None) -> None:
        try:
            started[app_id] = shared(tmp_path, app_id, home, extra)
        except BaseException as exc:  # reported below, with the sidecar's log
            errors.append(exc)

    threads = [
        threading.Thread(target=launch, args=("publisher", None)),
        threading.Thread(target=launch, args=("checkout", ["--app-port", str(subscriber.port)])),
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert sorted(p.name for p in (home / ".pillion").glob("*.db")) == ["pubsub.db", "state.db"]
        with started["checkout"].client() as client:
            assert client.post("/v1.0/state/statestore", json=[{"key": "k", "value": "c"}]).status_code == 204
            # The subscription is in place once the sidecar found the app.
            deadline = 100
            while not client.get("/v1.0/metadata").json().get("subscriptions") and deadline:
                deadline -= 1
                threading.Event().wait(0.05)
        with started["publisher"].client() as client:
            assert client.post("/v1.0/state/statestore", json=[{"key": "k", "value": "p"}]).status_code == 204
            assert client.get("/v1.0/state/statestore/k").json() == "p"
            assert client.post("/v1.0/publish/pubsub/orders", json={"n": 1}).status_code == 204
        delivered = subscriber.wait_for(1, "/orders")
        assert delivered[0].event["data"] == {"n": 1}
        assert delivered[0].event["source"] == "publisher"
        with sqlite3.connect(home / ".pillion" / "state.db") as db:
            keys = sorted(row[0] for row in db.execute("SELECT key FROM state"))
        assert keys == ["checkout||k", "publisher||k"]
    finally:
        for sidecar in started.values():
            sidecar.stop()
        subscriber.stop()


def test_data_dir_still_isolates(tmp_path: Path) -> None:
    home = tmp_path / "home"
    own = tmp_path / "own"
    sidecar = shared(tmp_path, "loner", home, ["--data-dir", str(own)])
    try:
        assert (
            httpx.post(sidecar.url + "/v1.0/state/statestore", json=[{"key": "k", "value": 1}]).status_code
            == 204
        )
    finally:
        sidecar.stop()
    assert sorted(p.name for p in own.glob("*.db")) == ["pubsub.db", "state.db"]
    assert not (home / ".pillion" / "state.db").exists()


def test_per_app_data_of_0_1_is_moved_into_the_shared_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # Pillion 0.1: the defaults lived in ~/.pillion/<app-id>/; --data-dir wrote the same layout.
    old = shared(tmp_path / "old", "legacy", home, ["--data-dir", str(home / ".pillion" / "legacy")])
    try:
        with old.client() as client:
            assert (
                client.post("/v1.0/state/statestore", json=[{"key": "kept", "value": [1, 2]}]).status_code
                == 204
            )
            for n in range(3):
                assert client.post("/v1.0/publish/pubsub/backlog", json={"n": n}).status_code == 204
    finally:
        old.stop()
    subscriber = AppProcess(tmp_path, [{"pubsubname": "pubsub", "topic": "backlog", "route": "/backlog"}])
    new = shared(tmp_path / "new", "legacy", home, ["--app-port", str(subscriber.port)])
    try:
        assert httpx.get(new.url + "/v1.0/state/statestore/kept").json() == [1, 2]
        received = sorted(d.event["data"]["n"] for d in subscriber.wait_for(3, "/backlog"))
        assert received == [0, 1, 2]
        assert "moved 1 state rows of app 'legacy'" in new.log()
        assert "moved 3 undelivered messages of app 'legacy'" in new.log()
    finally:
        new.stop()
        subscriber.stop()
    legacy = home / ".pillion" / "legacy"
    assert (legacy / ("state.db" + MOVED_SUFFIX)).exists()
    assert not (legacy / "state.db").exists()
    # A second start moves nothing again.
    again = shared(tmp_path / "again", "legacy", home)
    try:
        assert "moved" not in again.log()
    finally:
        again.stop()

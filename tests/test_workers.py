"""``--workers N`` (issue 11, item 3; docs/workers.md): several processes serve the HTTP API on
one port, the primary keeps what is about the sidecar as a whole, and the processes start, stop
and die together."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

from tests.pubsub_support import SubscriberApp, running, subscription
from tests.state_support import component, redis_metadata
from tests.support import SidecarProcess, run_sidecar_to_exit, start_sidecar


def _workers(sidecar: SidecarProcess) -> list[psutil.Process]:
    return [
        child
        for child in psutil.Process(sidecar.proc.pid).children()
        if "runtime.cli.worker" in " ".join(child.cmdline())
    ]


def _wait(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _serving_pid(sidecar: SidecarProcess, candidates: list[int], path: str) -> tuple[int, bytes]:
    """Ask ``path`` on a new connection; which process took the connection, and the answer."""
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        head, _, body = answer.partition(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += sock.recv(65536)
        answer = head + b"\r\n\r\n" + body
        assert head.lower().count(b"\r\ndate:") == 1, head
        local = sock.getsockname()[1]
        for pid in candidates:
            for connection in psutil.Process(pid).net_connections("tcp"):
                if connection.raddr and connection.raddr.port == local:
                    return pid, answer
    raise AssertionError(f"no process holds the connection from port {local}")


def test_processes_share_the_port_and_answer_as_one_sidecar(tmp_path: Path, redis_url: str) -> None:
    app_id = f"workers-{uuid.uuid4().hex[:8]}"
    topic = f"orders-{uuid.uuid4().hex[:8]}"
    resources = {
        "state.yaml": component("statestore", "state.redis", redis_metadata(redis_url)),
        "pubsub.yaml": component("pubsub", "pubsub.redis", redis_metadata(redis_url)),
    }
    app = SubscriberApp([subscription(topic, "/in")]).start()
    try:
        with running(tmp_path, app, resources, app_id=app_id, extra_args=["--workers", "2"]) as sidecar:
            _wait(lambda: len(_workers(sidecar)) == 1, 20, "the second process did not start")
            worker = _workers(sidecar)[0]
            pids = [sidecar.proc.pid, worker.pid]
            # The worker is serving once a connection it took is answered.
            served: dict[int, list[bytes]] = {pid: [] for pid in pids}
            deadline = time.monotonic() + 30
            while not all(served.values()):
                assert time.monotonic() < deadline, f"not every process took a connection: {served}"
                pid, answer = _serving_pid(sidecar, pids, "/v1.0/metadata")
                served[pid].append(answer)
            # Metadata is the primary's, whichever process took the connection: the app's
            # subscription is listed by both.
            for answers in served.values():
                assert answers[-1].startswith(b"HTTP/1.1 200"), answers[-1][:200]
                assert topic.encode() in answers[-1]
            for n in range(40):
                # A new connection each time, so both processes take some.
                with httpx.Client(base_url=sidecar.url) as client:
                    saved = client.post("/v1.0/state/statestore", json=[{"key": f"k{n}", "value": n}])
                    assert saved.status_code == 204, saved.text
                with httpx.Client(base_url=sidecar.url) as client:
                    assert client.get(f"/v1.0/state/statestore/k{n}").json() == n
                    published = client.post(f"/v1.0/publish/pubsub/{topic}", json={"n": n})
                    assert published.status_code == 204, published.text
            app.wait_for(40, "/in", timeout=30)
            assert sorted(d.event["data"]["n"] for d in app.received("/in")) == list(range(40))
            # One shutdown, whichever process takes it, stops them all.
            with httpx.Client(base_url=sidecar.url) as client:
                assert client.post("/v1.0/shutdown").status_code == 204
            assert sidecar.proc.wait(20) == 0
            _wait(lambda: not psutil.pid_exists(worker.pid) or worker.status() == "zombie", 10, "worker left")
            assert "Traceback" not in sidecar.log()
    finally:
        app.stop()


def test_a_component_held_in_one_process_is_refused(tmp_path: Path) -> None:
    resources = tmp_path / "resources"
    resources.mkdir()
    (resources / "state.yaml").write_text(component("cache", "state.in-memory", {}))
    finished = run_sidecar_to_exit(
        tmp_path,
        ["--app-id", "inmem", "--dapr-http-port", "0", "--resources-path", str(resources), "--workers", "2"],
    )
    assert finished.returncode == 1
    assert "--workers 2: cache (state.in-memory) cannot be shared by several processes" in finished.stderr, (
        finished.stderr
    )
    assert "Traceback" not in finished.stderr


def test_a_worker_that_dies_is_replaced_and_workers_die_with_the_primary(tmp_path: Path) -> None:
    sidecar = start_sidecar(tmp_path, "workers-embedded", extra_args=["--workers", "2"])
    try:
        _wait(lambda: len(_workers(sidecar)) == 1, 20, "the second process did not start")
        first = _workers(sidecar)[0].pid
        os.kill(first, signal.SIGKILL)
        _wait(
            lambda: [w.pid for w in _workers(sidecar) if w.pid != first and w.status() != "zombie"] != [],
            20,
            "the worker was not started again",
        )
        second = next(w for w in _workers(sidecar) if w.pid != first)
        assert "API worker 1 exited with code -9; starting it again" in sidecar.log()
        sidecar.proc.send_signal(signal.SIGKILL)
        sidecar.proc.wait(10)
        _wait(lambda: not psutil.pid_exists(second.pid) or second.status() == "zombie", 15, "worker outlived")
    finally:
        sidecar.stop()

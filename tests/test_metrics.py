"""Prometheus metrics on their own port: real counters after real requests, the resource monitor
on real processes, and the log as JSON."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from runtime.observability.jsonlog import JsonFormatter
from tests.pubsub_support import FAST_RETRIES, Delivery, Reply, SubscriberApp, subscription
from tests.state_support import component
from tests.support import SidecarProcess, free_port, run_sidecar_to_exit, start_sidecar

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def sidecar_with_metrics(tmp_path: Path, resources: dict[str, str], *args: str) -> tuple[SidecarProcess, int]:
    metrics_port = free_port()
    sidecar = start_sidecar(
        tmp_path,
        app_id="metered",
        resources=resources,
        extra_args=["--metrics-port", str(metrics_port), *args],
        env={"PILLION_RUN_DIR": str(tmp_path / "run")},
    )
    return sidecar, metrics_port


IN_MEMORY = {"statestore.yaml": component("statestore", "state.in-memory", {})}


def test_api_requests_are_counted_by_block_method_and_status(tmp_path: Path) -> None:
    sidecar, metrics_port = sidecar_with_metrics(tmp_path, IN_MEMORY)
    try:
        with sidecar.client() as client:
            for _ in range(3):
                assert (
                    client.post("/v1.0/state/statestore", json=[{"key": "k", "value": 1}]).status_code == 204
                )
            assert client.get("/v1.0/state/statestore/k").status_code == 200
            assert client.get("/v1.0/state/statestore/missing").status_code == 204
            assert client.get("/v1.0/state/nostore/k").status_code == 400
            assert client.get("/v1.0/metadata").status_code == 200
            # The API port does not serve metrics: /metrics there is an unknown path.
            assert client.get("/metrics").status_code == 404
        samples = scrape(metrics_port)
    finally:
        sidecar.stop()

    def requests(block: str, method: str, status: str) -> float | None:
        labels = {"app_id": "metered", "block": block, "method": method, "status": status}
        return value(samples, "pillion_http_server_requests_total", **labels)

    assert requests("state", "POST", "204") == 3
    assert requests("state", "GET", "200") == 1
    assert requests("state", "GET", "204") == 1
    assert requests("state", "GET", "400") == 1
    assert requests("metadata", "GET", "200") == 1
    assert requests("other", "GET", "404") == 1
    post = {"app_id": "metered", "block": "state", "method": "POST", "status": "204"}
    assert value(samples, "pillion_http_server_request_duration_seconds_count", **post) == 3
    seconds = value(samples, "pillion_http_server_request_duration_seconds_sum", **post)
    assert seconds is not None and seconds > 0
    # Only the sidecar is measured: nothing named an app process.
    sidecar_rss = value(samples, "pillion_process_resident_memory_bytes", app_id="metered", process="sidecar")
    assert sidecar_rss is not None and sidecar_rss > 0
    assert value(samples, "pillion_process_threads", app_id="metered", process="sidecar")
    assert value(samples, "pillion_process_open_fds", app_id="metered", process="sidecar")
    assert not [key for key in samples if ("process", "app") in key[1]]


def test_a_busy_metrics_port_is_a_warning_and_json_logs_parse(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        sidecar = start_sidecar(
            tmp_path,
            resources=IN_MEMORY,
            extra_args=["--metrics-port", str(busy), "--log-as-json"],
            env={"PILLION_RUN_DIR": str(tmp_path / "run")},
        )
        try:
            with sidecar.client() as client:
                assert client.get("/v1.0/healthz").status_code == 204
                assert client.get("/v1.0/state/statestore/k").status_code == 204
        finally:
            assert sidecar.stop() == 0
    lines = [json.loads(line) for line in sidecar.log().splitlines()]
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    warnings = [line for line in lines if line["level"] == "warning"]
    assert any(f"127.0.0.1:{busy}" in line["message"] for line in warnings), lines
    assert lines[-1]["message"] == "pillion stopped"


def test_metrics_can_be_switched_off(tmp_path: Path) -> None:
    sidecar, metrics_port = sidecar_with_metrics(tmp_path, IN_MEMORY, "--enable-metrics=false")
    try:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2)
        with sidecar.client() as client:
            assert client.get("/v1.0/state/statestore/k").status_code == 204
    finally:
        sidecar.stop()


def test_only_get_of_metrics_is_served(tmp_path: Path) -> None:
    sidecar, metrics_port = sidecar_with_metrics(tmp_path, IN_MEMORY)
    try:
        base = f"http://127.0.0.1:{metrics_port}"
        assert httpx.get(f"{base}/nothing", timeout=5).status_code == 404
        assert httpx.post(f"{base}/metrics", timeout=5).status_code == 405
        head = httpx.head(f"{base}/metrics", timeout=5)
        assert head.status_code == 200 and head.content == b""
        # A client that connects and says nothing does not hold up the next scrape.
        with socket.create_connection(("127.0.0.1", metrics_port)):
            assert scrape(metrics_port)
    finally:
        sidecar.stop()


@pytest.fixture
def doomed_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A private redis-server the test may kill."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is needed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    try:
        yield f"127.0.0.1:{port}", proc
    finally:
        proc.kill()
        proc.wait()


def test_component_errors_are_counted(
    tmp_path: Path, doomed_redis: tuple[str, subprocess.Popen[bytes]]
) -> None:
    address, redis_proc = doomed_redis
    metadata = {"redisHost": address, "redisMaxRetries": "-1", "dialTimeout": "200ms", "readTimeout": "500ms"}
    sidecar, metrics_port = sidecar_with_metrics(
        tmp_path, {"cache.yaml": component("cache", "state.redis", metadata)}
    )
    try:
        with sidecar.client() as client:
            assert client.post("/v1.0/state/cache", json=[{"key": "k", "value": 1}]).status_code == 204
            stale = client.post("/v1.0/state/cache", json=[{"key": "k", "value": 2, "etag": "999"}])
            assert stale.status_code == 409  # the caller's mistake, not the store's
            redis_proc.kill()
            redis_proc.wait()
            assert client.get("/v1.0/state/cache/k").json()["errorCode"] == "ERR_STATE_GET"
            assert client.delete("/v1.0/state/cache/k").json()["errorCode"] == "ERR_STATE_DELETE"
        samples = scrape(metrics_port)
    finally:
        sidecar.stop()
    errors = "pillion_component_errors_total"
    assert value(samples, errors, app_id="metered", component="cache", operation="get") == 1
    assert value(samples, errors, app_id="metered", component="cache", operation="delete") == 1
    assert value(samples, errors, app_id="metered", component="cache", operation="set") is None


# The app forks a worker; each holds memory it has written to, so it is resident.
_TREE_MIB = 120
TREE_APP = textwrap.dedent(
    """
    import subprocess, sys, time
    worker = "import time; held = b'w' * (70 * 2**20); print('worker', flush=True); time.sleep(120)"
    child = subprocess.Popen([sys.executable, "-c", worker])
    held = b"a" * (60 * 2**20)
    print("ready", flush=True)
    time.sleep(120)
    """
)


def test_app_process_tree_is_measured_under_pillion_run(tmp_path: Path) -> None:
    metrics_port = free_port()
    app = tmp_path / "app.py"
    app.write_text(TREE_APP)
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "runtime", "run", "--app-id", "tree", "--data-dir", str(tmp_path / "d")),
            *("--metrics-port", str(metrics_port), "--", sys.executable, str(app)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PILLION_RUN_DIR": str(tmp_path / "run")},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "pillion run exited early"
            try:
                samples = scrape(metrics_port)
            except httpx.TransportError:
                samples = {}
            rss = value(samples, "pillion_process_resident_memory_bytes", app_id="tree", process="app")
            # The app's tree holds 130 MiB; the sidecar (HTTP, gRPC, invocation) stays well below.
            if rss is not None and rss > _TREE_MIB * 2**20:
                break
            assert time.monotonic() < deadline, f"app RSS never reached {_TREE_MIB} MiB: {rss}"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert value(samples, "pillion_process_count", app_id="tree", process="app") == 2
    assert value(samples, "pillion_process_count", app_id="tree", process="sidecar") == 1
    sidecar_rss = value(samples, "pillion_process_resident_memory_bytes", app_id="tree", process="sidecar")
    assert sidecar_rss is not None and 0 < sidecar_rss < _TREE_MIB * 2**20
    app_cpu = value(samples, "pillion_process_cpu_seconds_total", app_id="tree", process="app")
    assert app_cpu is not None and app_cpu > 0
    assert value(samples, "pillion_process_threads", app_id="tree", process="app") == 2


def test_json_log_line_carries_the_traceback_on_one_line() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = logging.LogRecord(
            "pillion.x", logging.ERROR, __file__, 1, "failed: %s", ("it",), sys.exc_info()
        )
    line = JsonFormatter("app1").format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "failed: it"
    assert entry["level"] == "error" and entry["logger"] == "pillion.x" and entry["app_id"] == "app1"
    assert "Traceback" in entry["exception"] and "ValueError: bad\nvalue" in entry["exception"]


def test_pubsub_messages_are_counted_through_delivery(tmp_path: Path) -> None:
    def answer(delivery: Delivery) -> Reply:
        return {"/retry": (200, {"status": "RETRY"}), "/drop": (200, {"status": "DROP"})}.get(
            delivery.path, (200, None)
        )

    app = SubscriberApp(
        [
            subscription("ok", "/ok"),
            subscription("retry", "/retry", deadLetterTopic="poison"),
            subscription("poison", "/poison"),
            subscription("drop", "/drop"),
        ],
        answer,
    ).start()
    metrics_port = free_port()
    sidecar = start_sidecar(
        tmp_path,
        app_id="metered",
        resources={"pubsub.yaml": component("pubsub", "pubsub.in-memory", FAST_RETRIES)},
        extra_args=["--app-port", str(app.port), "--metrics-port", str(metrics_port)],
        env={"PILLION_RUN_DIR": str(tmp_path / "run")},
        wait_path="/v1.0/healthz",
    )
    try:
        with sidecar.client() as client:
            for topic in ("ok", "ok", "retry", "drop"):
                assert client.post(f"/v1.0/publish/pubsub/{topic}", json={"n": 1}).status_code == 204
            assert client.post("/v1.0/publish/nobroker/ok", json={}).status_code == 404
        app.wait_for(2, "/ok")
        app.wait_for(1, "/poison")  # after three tries
        deadline = time.monotonic() + 10
        while True:  # the DROP is settled just after the app's answer
            samples = scrape(metrics_port)
            if value(
                samples, "pillion_pubsub_dropped_total", app_id="metered", pubsub="pubsub", topic="drop"
            ):
                break
            assert time.monotonic() < deadline, "the DROP was never counted"
            time.sleep(0.05)
    finally:
        sidecar.stop()
        app.stop()

    def count(name: str, topic: str) -> float | None:
        return value(samples, name, app_id="metered", pubsub="pubsub", topic=topic)

    assert count("pillion_pubsub_published_total", "ok") == 2
    assert count("pillion_pubsub_published_total", "retry") == 1
    assert count("pillion_pubsub_delivered_total", "ok") == 2
    assert count("pillion_pubsub_delivered_total", "poison") == 1
    assert count("pillion_pubsub_retried_total", "retry") == 2  # tries 1 and 2; the 3rd gives up
    assert count("pillion_pubsub_dead_lettered_total", "retry") == 1
    assert count("pillion_pubsub_dead_lettered_total", "drop") is None
    assert count("pillion_pubsub_delivery_duration_seconds_count", "retry") == 3
    assert count("pillion_pubsub_delivery_duration_seconds_count", "ok") == 2
    publish = {"app_id": "metered", "block": "publish", "method": "POST"}
    assert value(samples, "pillion_http_server_requests_total", **publish, status="204") == 4
    assert value(samples, "pillion_http_server_requests_total", **publish, status="404") == 1


def test_every_log_line_is_json_under_pillion_run_and_on_failure(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            *(
                sys.executable,
                "-m",
                "runtime",
                "run",
                "--app-id",
                "jsonlog",
                "--data-dir",
                str(tmp_path / "d"),
            ),
            *("--log-as-json", "--", sys.executable, "-c", "print('hello')"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PILLION_RUN_DIR": str(tmp_path / "run")},
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == "== APP == hello\n"  # the app's output is the app's own
    lines = [json.loads(line) for line in run.stderr.splitlines()]
    assert any("with its sidecar on http://127.0.0.1:" in line["message"] for line in lines)
    assert {line["app_id"] for line in lines} == {"jsonlog"}

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.yaml").write_text(component("x", "state.nonexistent", {}))
    failed = run_sidecar_to_exit(
        tmp_path, ["--app-id", "jsonlog", "--resources-path", str(tmp_path / "bad"), "--log-as-json"]
    )
    assert failed.returncode == 1
    [line] = [json.loads(line) for line in failed.stderr.splitlines()]
    assert line["level"] == "error" and "state.nonexistent" in line["message"]

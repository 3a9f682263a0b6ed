"""App health checks (--enable-app-health-check): readiness waits for a healthy app, deliveries
pause while it is unhealthy and resume when it recovers, and metadata and metrics show it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runtime.cli.main import build_parser, options_from_args
from runtime.lifecycle.sidecar import StartupError
from tests.app_process import AppProcess, wait_until
from tests.state_support import component
from tests.support import SidecarProcess, free_port, run_sidecar_to_exit, start_sidecar

APP_TOKEN = "app-token-for-health-tests"
SUBSCRIPTIONS = [{"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}]
HEALTH_FLAGS = [
    "--enable-app-health-check",
    "--app-health-probe-interval",
    "100ms",
    "--app-health-probe-timeout",
    "100",
    "--app-health-threshold",
    "2",
]


def start(tmp_path: Path, app: AppProcess, ready: bool = True) -> SidecarProcess:
    metrics_port = free_port()
    # One try only: a delivery attempted while the app is unhealthy would be dropped at once.
    settings = {
        "connectionString": str(tmp_path / "pubsub.db"),
        "pollInterval": "50ms",
        "deliveryMaxAttempts": "1",
    }
    return start_sidecar(
        tmp_path,
        app_id="healthy",
        resources={"pubsub.yaml": component("pubsub", "pubsub.sqlite", settings)},
        extra_args=["--app-port", str(app.port), "--metrics-port", str(metrics_port), *HEALTH_FLAGS],
        env={"APP_API_TOKEN": APP_TOKEN},
        wait_path="/v1.0/healthz" if ready else "/v1.0/healthz/outbound",
    )


def app_health(sidecar: SidecarProcess) -> str:
    with sidecar.client() as client:
        extended: dict[str, str] = client.get("/v1.0/metadata").json()["extended"]
    return extended["appHealth"]


def healthy_gauge(sidecar: SidecarProcess) -> str:
    port = sidecar.args[sidecar.args.index("--metrics-port") + 1]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return next(line for line in text.splitlines() if line.startswith("pillion_app_healthy{"))


@pytest.fixture
def app(tmp_path: Path) -> Iterator[AppProcess]:
    process = AppProcess(tmp_path, SUBSCRIPTIONS)
    yield process
    process.stop()


def publish(sidecar: SidecarProcess, text: str) -> None:
    with sidecar.client() as client:
        assert client.post("/v1.0/publish/pubsub/orders", content=text).status_code == 204


def test_deliveries_pause_while_the_app_is_unhealthy(tmp_path: Path, app: AppProcess) -> None:
    sidecar = start(tmp_path, app)
    try:
        with sidecar.client() as client:
            metadata = client.get("/v1.0/metadata").json()
        assert metadata["appConnectionProperties"]["health"] == {
            "healthCheckPath": "/healthz",
            "healthProbeInterval": "100ms",
            "healthProbeTimeout": "100ms",
            "healthThreshold": 2,
        }
        assert metadata["extended"]["appHealth"] == "healthy"
        assert healthy_gauge(sidecar) == 'pillion_app_healthy{app_id="healthy"} 1.0'
        publish(sidecar, "before")
        assert app.wait_for(1, "/orders")[0].event["data"] == "before"

        app.set_health(500)
        wait_until(lambda: app_health(sidecar) == "unhealthy", what="the app turning unhealthy")
        assert healthy_gauge(sidecar) == 'pillion_app_healthy{app_id="healthy"} 0.0'
        assert "app is unhealthy: GET /healthz answered 500 (2 failed probes in a row)" in sidecar.log()
        publish(sidecar, "while-unhealthy")
        # Several probe intervals: the message waits (the sidecar itself stays ready).
        probes = len(app.state()["probes"])
        wait_until(lambda: len(app.state()["probes"]) >= probes + 4, what="four more probes")
        assert [d.event["data"] for d in app.deliveries("/orders")] == ["before"]
        with sidecar.client() as client:
            assert client.get("/v1.0/healthz").status_code == 204

        app.set_health(200)
        delivered = app.wait_for(2, "/orders")
        assert [d.event["data"] for d in delivered] == ["before", "while-unhealthy"]
        assert app_health(sidecar) == "healthy"
        assert "app is healthy (GET /healthz succeeded); deliveries go on" in sidecar.log()
    finally:
        sidecar.stop()
    # With one try allowed, an attempt made while unhealthy would have dropped the message.
    assert "dropping" not in sidecar.log()
    state = app.state()
    assert all("dapr-api-token" not in probe for probe in state["probes"])
    assert all(d["headers"]["dapr-api-token"] == APP_TOKEN for d in state["deliveries"])


def test_not_ready_before_the_first_healthy_probe(tmp_path: Path) -> None:
    app = AppProcess(tmp_path, SUBSCRIPTIONS, healthy=False)
    sidecar = start(tmp_path, app, ready=False)
    try:
        with sidecar.client() as client:
            wait_until(lambda: len(app.state()["probes"]) >= 3, what="three probes")
            answer = client.get("/v1.0/healthz")
            assert answer.status_code == 500
            assert answer.json()["message"] == "dapr is not ready: [app]"
            assert client.get("/v1.0/metadata").json()["extended"]["appHealth"] == "unhealthy"
            # As daprd: the app is not asked for its subscriptions before it is healthy.
            assert app.state()["subscribe_calls"] == 0
            publish(sidecar, "early")

            app.set_health(204)
            wait_until(lambda: client.get("/v1.0/healthz").status_code == 204, what="readiness")
        assert app.state()["subscribe_calls"] == 1
        assert app.wait_for(1, "/orders")[0].event["data"] == "early"
    finally:
        sidecar.stop()
        app.stop()


def test_a_probe_answered_with_404_fails(tmp_path: Path) -> None:
    app = AppProcess(tmp_path, SUBSCRIPTIONS)
    sidecar = start_sidecar(
        tmp_path,
        resources={"pubsub.yaml": component("pubsub", "pubsub.in-memory", {})},
        extra_args=["--app-port", str(app.port), *HEALTH_FLAGS, "--app-health-check-path", "missing"],
    )
    try:
        line = "app is not healthy yet: GET /missing answered 404 (2 failed probes in a row)"
        wait_until(lambda: line in sidecar.log(), what="the log line")
        assert app_health(sidecar) == "unhealthy"
        with sidecar.client() as client:
            health = client.get("/v1.0/metadata").json()["appConnectionProperties"]["health"]
        assert health["healthCheckPath"] == "/missing"
    finally:
        sidecar.stop()
        app.stop()


def test_metadata_has_no_health_without_the_flag(tmp_path: Path) -> None:
    sidecar = start_sidecar(tmp_path, extra_args=["--app-port", str(free_port())])
    try:
        with sidecar.client() as client:
            metadata = client.get("/v1.0/metadata").json()
        assert "health" not in metadata["appConnectionProperties"]
        assert "appHealth" not in metadata["extended"]
    finally:
        sidecar.stop()


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--enable-app-health-check"], "--enable-app-health-check needs --app-port"),
        (
            ["--enable-app-health-check", "--app-port", "3000", "--app-health-probe-timeout", "6s"],
            "--app-health-probe-timeout must not be longer than --app-health-probe-interval",
        ),
    ],
)
def test_inconsistent_flags_stop_start_up(tmp_path: Path, args: list[str], problem: str) -> None:
    result = run_sidecar_to_exit(tmp_path, ["--app-id", "a", "--dapr-http-port", str(free_port()), *args])
    assert result.returncode == 1
    assert problem in result.stderr


def test_flags_read_as_daprd_reads_them() -> None:
    """Bare numbers: seconds for the interval, milliseconds for the timeout; `run` takes them too."""
    for command in (["serve"], ["run"]):
        args = build_parser().parse_args(
            [
                *command,
                "--app-id",
                "a",
                "--app-port",
                "3000",
                "--enable-app-health-check=true",
                "--app-health-probe-interval",
                "2",
                "--app-health-probe-timeout",
                "750",
                "--app-health-threshold",
                "5",
                "--app-health-check-path",
                "/ready",
                *(["--", "true"] if command == ["run"] else []),
            ]
        )
        if command == ["run"]:
            args.dapr_http_port = args.metrics_port = 1
        check = options_from_args(args).app_health
        assert check is not None
        assert (check.path, check.interval, check.timeout, check.threshold) == ("/ready", 2.0, 0.75, 5)
        assert check.describe()["healthProbeTimeout"] == "750ms"
    defaults = options_from_args(build_parser().parse_args(["serve", "--app-id", "a"]))
    assert defaults.app_health is None
    with pytest.raises(StartupError):
        options_from_args(build_parser().parse_args(["serve", "--app-id", "a", "--enable-app-health-check"]))

"""A backend that accepts TCP and never answers must not hang the sidecar (issue 13, item 1).

Every component is started against a silent socket (the embedded ones, which have no socket,
against their own files), its ``init`` cancelled half-way, then closed: both must end promptly
and leave no task and no connection behind. Then whole sidecars: start-up against a silent broker
fails with one line in time, and SIGTERM ends a sidecar whatever its components are doing.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from components import registry
from components.base import Component, ComponentContext
from runtime.lifecycle.deadlines import STOP_SLACK
from tests.silent import SilentServer, silent_port
from tests.state_support import component
from tests.support import free_port, start_sidecar

# How long a cancelled init or a close may take on a silent backend.
PROMPT = 5.0

METADATA: dict[str, Callable[[int, Path], dict[str, str]]] = {
    "state.in-memory": lambda port, folder: {},
    "state.sqlite": lambda port, folder: {"connectionString": str(folder / "state.db")},
    "state.redis": lambda port, folder: {"redisHost": f"127.0.0.1:{port}"},
    "state.postgresql": lambda port, folder: {"connectionString": f"postgres://u:p@127.0.0.1:{port}/db"},
    "pubsub.in-memory": lambda port, folder: {},
    "pubsub.sqlite": lambda port, folder: {"connectionString": str(folder / "pubsub.db")},
    "pubsub.redis": lambda port, folder: {"redisHost": f"127.0.0.1:{port}"},
    "pubsub.jetstream": lambda port, folder: {"natsURL": f"nats://127.0.0.1:{port}"},
    "pubsub.rabbitmq": lambda port, folder: {"connectionString": f"amqp://guest:guest@127.0.0.1:{port}/"},
    "pubsub.mqtt3": lambda port, folder: {"url": f"tcp://127.0.0.1:{port}"},
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def silent() -> AsyncIterator[SilentServer]:
    server = SilentServer()
    await server.start()
    yield server
    await server.stop()


def build(kind: str, port: int, folder: Path) -> Component:
    cls = registry.component_class(kind)
    assert cls is not None
    metadata = cls.schema.parse(METADATA[kind](port, folder))
    instance: Component = cls(metadata, ComponentContext("c", "app", folder / "data", folder))
    return instance


def others(before: set[asyncio.Task[Any]]) -> list[str]:
    """Tasks started since ``before`` that still run, but the silent server's own."""
    current = asyncio.current_task()
    return [
        repr(task.get_coro())
        for task in asyncio.all_tasks() - before
        if task is not current and not task.done() and "SilentServer" not in repr(task.get_coro())
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("kind", sorted(METADATA))
async def test_a_cancelled_init_and_a_close_leave_nothing_behind(
    kind: str, silent: SilentServer, tmp_path: Path
) -> None:
    instance = build(kind, silent.port, tmp_path)
    before = asyncio.all_tasks()
    init = asyncio.ensure_future(instance.init())
    await asyncio.wait({init}, timeout=0.5)
    init.cancel()
    started = time.monotonic()
    done, _ = await asyncio.wait({init}, timeout=PROMPT)
    assert done, f"{kind}: init ignored its cancellation for {PROMPT}s"
    closing = asyncio.ensure_future(instance.close())
    done, _ = await asyncio.wait({closing}, timeout=PROMPT)
    assert done, f"{kind}: close did not end within {PROMPT}s"
    assert time.monotonic() - started < PROMPT
    deadline = time.monotonic() + 1
    while (left := others(before)) or silent.open_connections:
        if time.monotonic() > deadline:
            raise AssertionError(f"{kind}: left behind {left} and {silent.open_connections} open connections")
        await asyncio.sleep(0.02)


def resource(name: str, kind: str, metadata: dict[str, str], spec: str = "") -> str:
    return component(name, kind, metadata).replace("spec:\n", f"spec:\n{spec}")


def serve(tmp_path: Path, resources: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    """``pillion <extra...>`` with these resources; its output goes to ``tmp_path / "log"``."""
    folder = tmp_path / "resources"
    folder.mkdir(exist_ok=True)
    for name, text in resources.items():
        (folder / name).write_text(text)
    command, rest = extra[0], list(extra[1:])
    app = rest[rest.index("--") :] if "--" in rest else []
    flags = rest[: len(rest) - len(app)]
    with (tmp_path / "log").open("w") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runtime",
                command,
                "--app-id",
                "silent",
                "--resources-path",
                str(folder),
                "--data-dir",
                str(tmp_path / "data"),
                "--metrics-port",
                str(free_port()),
                *flags,
                *app,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
        )


def output(tmp_path: Path) -> str:
    return (tmp_path / "log").read_text()


SILENT_BROKERS = {
    "pubsub.rabbitmq": lambda port: {"connectionString": f"amqp://guest:guest@127.0.0.1:{port}/"},
    "pubsub.jetstream": lambda port: {"natsURL": f"nats://127.0.0.1:{port}"},
    "pubsub.mqtt3": lambda port: {"url": f"tcp://127.0.0.1:{port}"},
    "state.postgresql": lambda port: {"connectionString": f"postgres://u:p@127.0.0.1:{port}/db"},
}


@pytest.mark.parametrize("command", [["serve"], ["run"]])
@pytest.mark.parametrize("kind", sorted(SILENT_BROKERS))
def test_a_silent_backend_stops_start_up_with_one_line_in_time(
    tmp_path: Path, kind: str, command: list[str]
) -> None:
    with silent_port() as port:
        yaml = resource("broken", kind, SILENT_BROKERS[kind](port), "  initTimeout: 2s\n")
        started = time.monotonic()
        args = [*command, "--dapr-http-port", str(free_port())]
        proc = serve(
            tmp_path, {"c.yaml": yaml}, *args, *(["--", "sleep", "60"] if command == ["run"] else [])
        )
        try:
            proc.wait(timeout=20)
        finally:
            proc.kill()
        took = time.monotonic() - started
        stderr = output(tmp_path)
    assert proc.returncode == 1, stderr
    assert "init did not finish within 2s (spec.initTimeout)" in stderr
    assert "Traceback" not in stderr
    # initTimeout plus the interpreter's own start (a second or more on a busy 2-core machine).
    assert took < 2 + 8, f"start-up failure took {took:.1f}s"


def _wait_serving(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, "the sidecar exited"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1.0/healthz/outbound", timeout=1).status_code in (
                204,
                500,
            ):
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the sidecar did not start"
        time.sleep(0.05)


def _sigterm_takes(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> float:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("SIGTERM did not end the sidecar within 30s") from None
    return time.monotonic() - started


@pytest.mark.parametrize("kind", sorted(SILENT_BROKERS))
def test_sigterm_ends_a_sidecar_whose_silent_component_was_ignored(tmp_path: Path, kind: str) -> None:
    with silent_port() as port:
        yaml = resource(
            "broken", kind, SILENT_BROKERS[kind](port), "  initTimeout: 1s\n  ignoreErrors: true\n"
        )
        http_port = free_port()
        proc = serve(
            tmp_path, {"c.yaml": yaml}, "serve", "--dapr-http-port", str(http_port), "--drain-timeout", "1"
        )
        _wait_serving(http_port, proc)
        took = _sigterm_takes(proc)
    stderr = output(tmp_path)
    assert proc.returncode == 0, stderr
    assert "init did not finish within 1s" in stderr and "ignored: ignoreErrors is true" in stderr
    assert took < 1 + 5, f"SIGTERM took {took:.1f}s"


def test_sigterm_ends_a_sidecar_after_a_refused_reload_of_a_silent_broker(tmp_path: Path) -> None:
    http_port = free_port()
    store = component("statestore", "state.in-memory", {})
    proc = serve(
        tmp_path, {"store.yaml": store}, "serve", "--dapr-http-port", str(http_port), "--drain-timeout", "1"
    )
    with silent_port() as port:
        _wait_serving(http_port, proc)
        yaml = resource(
            "broken", "pubsub.rabbitmq", SILENT_BROKERS["pubsub.rabbitmq"](port), "  initTimeout: 1s\n"
        )
        (tmp_path / "resources" / "broker.yaml").write_text(yaml)
        deadline = time.monotonic() + 15
        while "resources not reloaded" not in output(tmp_path):
            assert time.monotonic() < deadline, output(tmp_path)
            time.sleep(0.1)
        took = _sigterm_takes(proc)
    assert proc.returncode == 0, output(tmp_path)
    assert took < 1 + 5, f"SIGTERM took {took:.1f}s"


def test_sigterm_ends_the_process_even_when_something_will_not_stop(tmp_path: Path) -> None:
    """The last resort: a trace exporter stuck on a silent collector holds a thread that no
    cancellation reaches; the process still ends in time, and says why."""
    with silent_port() as collector:
        config = tmp_path / "config.yaml"
        config.write_text(
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: tracing}\n"
            "spec:\n  tracing:\n    samplingRate: '1'\n    otel:\n"
            f"      endpointAddress: 127.0.0.1:{collector}\n      isSecure: false\n      protocol: http\n"
        )
        env = {"OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_EXPORTER_OTLP_TIMEOUT": "600"}
        sidecar = start_sidecar(
            tmp_path, extra_args=["--config", str(config), "--drain-timeout", "1"], env=env
        )
        httpx.get(f"{sidecar.url}/v1.0/metadata")  # a span, whose export then hangs
        time.sleep(0.5)
        took = _sigterm_takes(sidecar.proc)
    log = sidecar.log()
    assert took < 1 + STOP_SLACK + 5, f"SIGTERM took {took:.1f}s"
    assert "(something would not stop): exiting now with code 1" in log, log
    assert sidecar.proc.returncode == 1

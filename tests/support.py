"""Real processes for tests: a sidecar started as ``python -m runtime serve`` on a free port."""

from __future__ import annotations

import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


# Each pytest-xdist worker hands out ports from its own block below the kernel's ephemeral range
# (32768 and up), so two workers of one run can never both be given a port in the moment between
# the check here and the sidecar's bind. A run without workers uses block 0.
_PORT_BLOCK = 1000
_PORT_BASE = 20000
_worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
_port_range = range(
    _PORT_BASE + int(_worker or 0) * _PORT_BLOCK, _PORT_BASE + (int(_worker or 0) + 1) * _PORT_BLOCK
)
# Starting at a random place in the block keeps separate pytest runs on one machine (each with its
# own gw0) from walking the same ports in step.
_start = random.randrange(len(_port_range))
_next_port: Iterator[int] = itertools.cycle([*_port_range[_start:], *_port_range[:_start]])


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on, from this worker's own block."""
    for _ in _port_range:
        port = next(_next_port)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_port_range.start}-{_port_range.stop - 1}")


@dataclass
class SidecarProcess:
    proc: subprocess.Popen[bytes]
    port: int
    app_id: str
    log_path: Path
    data_dir: Path
    args: list[str] = field(default_factory=list)
    # The gRPC API's port (0 when the test chose it in extra_args).
    grpc_port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, **kwargs)  # type: ignore[arg-type]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def write_resources(folder: Path, resources: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in resources.items():
        (folder / name).write_text(text)
    return folder


def start_sidecar(
    workdir: Path,
    app_id: str = "testapp",
    resources: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    port: int | None = None,
    wait_path: str = "/v1.0/healthz/outbound",
    timeout: float = 60,
    open_files: int | None = None,
    isolated: bool = True,
) -> SidecarProcess:
    """Start a sidecar and wait until ``wait_path`` answers 204; fail with its log otherwise.

    ``isolated``: pass ``--data-dir``, so the embedded defaults do not land in ``$HOME/.pillion``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    data_dir = workdir / "data"
    args = [
        sys.executable,
        "-m",
        "runtime",
        "serve",
        "--app-id",
        app_id,
        "--dapr-http-port",
        str(port),
    ]
    if isolated:
        args += ["--data-dir", str(data_dir)]
    if resources is not None:
        args += ["--resources-path", str(write_resources(workdir / "resources", resources))]
    extra_args = extra_args or []
    if not any(a.startswith(("--metrics-port", "--enable-metrics")) for a in extra_args):
        # Parallel sidecars would all want 9090; a taken port is only a warning, but noise.
        args += ["--metrics-port", str(free_port())]
    grpc_port = 0
    if not any(a.startswith("--dapr-grpc-port") for a in extra_args):
        # Each sidecar its own gRPC port, as for metrics: the default 50001 would be shared.
        grpc_port = free_port()
        args += ["--dapr-grpc-port", str(grpc_port)]
    args += extra_args
    log_path = workdir / f"sidecar-{port}.log"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with log_path.open("wb") as log_file:
        # prlimit(1) sets the sidecar's open-file limit (a preexec_fn is unsafe in threaded tests).
        limit = ["prlimit", f"--nofile={open_files}:{open_files}"] if open_files else []
        proc = subprocess.Popen(
            limit + args, stdout=log_file, stderr=subprocess.STDOUT, cwd=workdir, env=full_env
        )
    sidecar = SidecarProcess(proc, port, app_id, log_path, data_dir, args, grpc_port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sidecar exited with {proc.returncode}:\n{sidecar.log()}")
        try:
            if httpx.get(sidecar.url + wait_path, timeout=1).status_code == 204:
                return sidecar
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    sidecar.kill()
    raise RuntimeError(f"sidecar not ready within {timeout}s:\n{sidecar.log()}")


def run_sidecar_to_exit(
    workdir: Path, args: list[str], timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    """Run ``pillion serve`` expecting it to stop on its own (bad resources, port in use...)."""
    return subprocess.run(
        [sys.executable, "-m", "runtime", "serve", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=workdir,
    )

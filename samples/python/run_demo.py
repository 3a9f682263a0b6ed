"""Start a Pillion sidecar on the embedded default, run the counter app against it, stop both."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(port: int, sidecar: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if sidecar.poll() is not None:
            sys.exit(f"the sidecar exited with {sidecar.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1.0/healthz/outbound", timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit("the sidecar did not become ready")


def main() -> int:
    port = free_port()
    sidecar = subprocess.Popen(
        [sys.executable, "-m", "runtime", "serve", "--app-id", "pillion-demo", "--dapr-http-port", str(port)]
    )
    try:
        wait_ready(port, sidecar)
        env = {**os.environ, "DAPR_HTTP_PORT": str(port)}
        return subprocess.call([sys.executable, str(HERE / "counter.py")], env=env)
    finally:
        sidecar.send_signal(signal.SIGTERM)
        sidecar.wait(10)


if __name__ == "__main__":
    sys.exit(main())

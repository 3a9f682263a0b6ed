"""A subscriber app in a process of its own, driven over HTTP by the tests.

It answers ``GET /dapr/subscribe`` with the subscriptions it was started with, ``GET /healthz`` with
a status the test sets (``POST /control/health``), records every other POST as a delivery, and
tells what it saw at ``GET /control/state``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support import free_port

APP = """
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, subscriptions, health = int(sys.argv[1]), json.loads(sys.argv[2]), [int(sys.argv[3])]
lock = threading.Lock()
seen = {"deliveries": [], "probes": [], "subscribe_calls": 0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, status, body=b""):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        headers = {k.lower(): v for k, v in self.headers.items()}
        if self.path == "/dapr/subscribe":
            with lock:
                seen["subscribe_calls"] += 1
            self.send(200, json.dumps(subscriptions).encode())
        elif self.path == "/healthz":
            with lock:
                seen["probes"].append(headers)
            self.send(health[0])
        elif self.path == "/control/state":
            with lock:
                body = json.dumps(seen).encode()
            self.send(200, body)
        else:
            self.send(404)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/control/health":
            health[0] = int(body)
            self.send(204)
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        with lock:
            seen["deliveries"].append({"path": self.path, "headers": headers, "body": body.decode()})
        self.send(200)


ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


@dataclass
class Delivered:
    path: str
    headers: dict[str, str]
    body: str

    @property
    def event(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value


class AppProcess:
    def __init__(self, workdir: Path, subscriptions: list[dict[str, Any]], healthy: bool = True) -> None:
        self.port = free_port()
        script = workdir / "app.py"
        script.write_text(APP)
        status = "200" if healthy else "503"
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(self.port), json.dumps(subscriptions), status]
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(self.url + "/control/state", timeout=1)
                return
            except httpx.TransportError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("the test app did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)

    def set_health(self, status: int) -> None:
        httpx.post(self.url + "/control/health", content=str(status), timeout=5).raise_for_status()

    def state(self) -> dict[str, Any]:
        value: dict[str, Any] = httpx.get(self.url + "/control/state", timeout=5).json()
        return value

    def deliveries(self, path: str | None = None) -> list[Delivered]:
        found = [Delivered(**d) for d in self.state()["deliveries"]]
        return [d for d in found if path is None or d.path == path]

    def wait_for(self, count: int, path: str | None = None, timeout: float = 10) -> list[Delivered]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.deliveries(path)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} of {count} deliveries to {path or 'any path'}: {found}")
            time.sleep(0.03)


def wait_until(check: Callable[[], object], timeout: float = 10, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(0.03)

"""An HTTP app in a process of its own that records every request and answers as told.

Any method on any path is recorded (method, path, headers, body) and answered with the status set
for ``METHOD /path`` (``POST /control/answer`` with ``{"METHOD /path": status}``), by default 200
with a JSON echo of the request. Used as the app behind a sidecar (input bindings, configuration
updates) and as the target of ``bindings.http``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support import free_port

SERVER = """
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port = int(sys.argv[1])
lock = threading.Lock()
seen = []
answers = {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle_any(self):
        length = int(self.headers.get("Content-Length", "0") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path
        if path == "/control/answer":
            with lock:
                answers.update(json.loads(body))
            return self.reply(204, b"")
        if path == "/control/seen":
            with lock:
                data = json.dumps(seen).encode()
            return self.reply(200, data)
        text = body.decode("utf-8", "replace")
        record = {"method": self.command, "path": path, "headers": dict(self.headers.items()), "body": text}
        with lock:
            seen.append(record)
            status = answers.get(self.command + " " + path.split("?")[0], 200)
        self.reply(status, json.dumps(record).encode() if self.command != "HEAD" else b"")

    def reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Echo", "yes")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = do_TRACE = handle_any


ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: str

    def header(self, name: str) -> str | None:
        lowered = {k.lower(): v for k, v in self.headers.items()}
        return lowered.get(name.lower())


class EchoApp:
    def __init__(self, workdir: Path, answers: dict[str, int] | None = None) -> None:
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        script = workdir / f"echo_app_{self.port}.py"
        script.write_text(SERVER)
        self.proc = subprocess.Popen([sys.executable, str(script), str(self.port)])
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(self.url + "/control/seen", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("the echo app did not start") from None
                time.sleep(0.02)
        if answers:
            self.answer(answers)

    def answer(self, answers: dict[str, int]) -> None:
        httpx.post(self.url + "/control/answer", json=answers, timeout=5).raise_for_status()

    def seen(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        records: list[dict[str, Any]] = httpx.get(self.url + "/control/seen", timeout=5).json()
        found = [Seen(**r) for r in records]
        return [
            s for s in found if (method is None or s.method == method) and (path is None or s.path == path)
        ]

    def wait_for(
        self, count: int, method: str | None = None, path: str | None = None, timeout: float = 10
    ) -> list[Seen]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.seen(method, path)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} of {count} {method or ''} {path or ''} requests: {found}")
            time.sleep(0.03)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def json_body(seen: Seen) -> Any:
    return json.loads(seen.body)

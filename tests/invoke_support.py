"""An app that service-invocation tests call, in a process of its own, and helpers around it.

Routes: ``/echo/...`` answers the request it saw as JSON; ``/status/<code>`` answers that status
with a custom header and two cookies; ``/redirect`` a 302; ``/gzip`` a gzip body; ``/sink``
streams the body in and answers its length and SHA-256; ``/source/<n>`` streams n bytes out;
``/slow/<seconds>``; ``/flaky/<key>/<failures>`` fails that many times then succeeds;
``/fail`` always 500; ``/count/<key>`` tells how many calls a key saw. Every answer carries
``x-instance`` (the name given at start).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support import SidecarProcess, free_port, start_sidecar

APP = r"""
import asyncio, gzip, hashlib, json, sys
from collections import Counter
from aiohttp import web

name = sys.argv[2]
calls = Counter()

async def handle(request):
    path = request.path
    first = path.split("/")[1] if "/" in path else ""
    headers = {"x-instance": name}
    calls[path] += 1
    if path == "/dapr/subscribe":
        return web.json_response([])
    if first == "sink":
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"size": size, "sha256": digest.hexdigest()}, headers=headers)
    if first == "source":
        n = int(path.split("/")[2])
        response = web.StreamResponse(headers={**headers, "content-type": "application/octet-stream"})
        await response.prepare(request)
        block = bytes(range(256)) * 256
        sent = 0
        while sent < n:
            part = block[: min(len(block), n - sent)]
            await response.write(part)
            sent += len(part)
        await response.write_eof()
        return response
    if first == "status":
        code = int(path.split("/")[2])
        response = web.Response(status=code, text=f"status {code}", headers={**headers, "x-custom": "kept"})
        response.set_cookie("a", "1")
        response.set_cookie("b", "2")
        return response
    if first == "redirect":
        return web.Response(status=302, headers={**headers, "location": "/echo/elsewhere"})
    if first == "gzip":
        zipped = gzip.compress(b"zipped body")
        return web.Response(body=zipped, headers={**headers, "content-encoding": "gzip"})
    if first == "slow":
        await asyncio.sleep(float(path.split("/")[2]))
        return web.Response(text="slow", headers=headers)
    if first == "flaky":
        _, _, key, failures = path.split("/")
        calls[key] += 1
        if calls[key] <= int(failures):
            return web.Response(status=500, text="not yet", headers=headers)
        return web.Response(text=f"ok after {calls[key]}", headers=headers)
    if first == "fail":
        return web.Response(status=500, text="always", headers=headers)
    if first == "count":
        return web.json_response({"calls": calls[path.split("/")[2]]}, headers=headers)
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body": body.decode("utf-8", "replace"),
        },
        headers=headers,
    )

app = web.Application(client_max_size=1024**3)
app.router.add_route("*", "/{tail:.*}", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


@dataclass
class InvokeApp:
    proc: subprocess.Popen[bytes]
    port: int
    name: str

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def start_app(name: str = "app", port: int | None = None) -> InvokeApp:
    port = port or free_port()
    proc = subprocess.Popen([sys.executable, "-c", APP, str(port), name])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/count/x", timeout=1)
            return InvokeApp(proc, port, name)
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the test app did not start")


def start_invoke_sidecar(
    workdir: Path,
    app_id: str,
    app: InvokeApp | None = None,
    extra_args: list[str] | None = None,
    resources: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> SidecarProcess:
    args = list(extra_args or [])
    if app is not None:
        args += ["--app-port", str(app.port)]
    return start_sidecar(workdir / app_id, app_id=app_id, extra_args=args, resources=resources, env=env)


Pair = tuple[SidecarProcess, SidecarProcess, InvokeApp]


@contextmanager
def invoke_pair(workdir: Path, app_name: str, caller_id: str, target_id: str) -> Iterator[Pair]:
    """(caller's sidecar, target's sidecar with the app ``app_name``, the app), stopped after."""
    app = start_app(app_name)
    target = start_invoke_sidecar(workdir, target_id, app)
    caller = start_invoke_sidecar(workdir, caller_id)
    try:
        yield caller, target, app
    finally:
        caller.stop()
        target.stop()
        app.stop()


_INTERNAL = re.compile(r"internal port ([\d.]+):(\d+)")


def internal_port(sidecar: SidecarProcess) -> int:
    match = _INTERNAL.search(sidecar.log())
    assert match, sidecar.log()
    return int(match.group(2))

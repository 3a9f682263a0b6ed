"""``pillion run -f FILE|DIR``: the Dapr CLI's multi-app run file, every app with its own sidecar.

Each app becomes one ``pillion run`` child (sidecar and app sharing their fate), started one after
another in file order, each once the previous sidecar answers. Output lines come back prefixed
``== APP - <id> ==`` and ``== PILLION - <id> ==``; as with ``dapr run -f``, app output goes to the
console and a log file, sidecar output to a log file only (warnings and errors to the console too).
One Ctrl-C or SIGTERM stops every app; an app that fails is reported with its exit code and does
not stop the others. Format and choices: docs/invocation.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from runtime.lifecycle.ports import free_port

_PR_SET_PDEATHSIG = 1
_DESTINATIONS = ("console", "file", "fileandconsole")
_START_TIMEOUT = 60.0


class RunFileError(Exception):
    """The run file cannot be used; the message is one line for the user."""


@dataclass
class AppSpec:
    app_id: str
    app_dir: Path
    command: list[str]
    args: list[str]
    env: dict[str, str]
    http_port: int | None
    app_log: str = "fileandconsole"
    daprd_log: str = "file"
    log_files: dict[str, Path] = field(default_factory=dict)


def find_run_file(given: str) -> Path:
    path = Path(given)
    if path.is_dir():
        path = path / "dapr.yaml"
    if not path.is_file():
        raise RunFileError(f"run file {path} not found")
    if path.suffix not in (".yaml", ".yml"):
        raise RunFileError(f"run file {path} must be a .yaml or .yml file")
    return path


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _paths(entry: dict[str, Any], base: Path) -> list[Path]:
    found: list[Any] = list(entry.get("resourcesPaths") or [])
    if entry.get("resourcesPath"):
        found.append(entry["resourcesPath"])
    return [(base / str(p)).resolve() for p in found]


def parse_run_file(path: Path) -> list[AppSpec]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RunFileError(f"{path}: cannot read the run file: {exc}") from None
    if not isinstance(doc, dict) or not doc.get("version"):
        raise RunFileError(f"{path}: a run file needs a non-zero version")
    common = doc.get("common") or {}
    apps = doc.get("apps")
    if not isinstance(common, dict) or not isinstance(apps, list) or not apps:
        raise RunFileError(f"{path}: 'common' must be a mapping and 'apps' a non-empty list")
    base = path.parent.resolve()
    specs: list[AppSpec] = []
    seen: set[str] = set()
    for index, app in enumerate(apps):
        where = f"{path}: apps[{index}]"
        if not isinstance(app, dict) or not app.get("appDirPath"):
            raise RunFileError(f"{where}: appDirPath is required")
        app_dir = (base / str(app["appDirPath"])).resolve()
        if not app_dir.is_dir():
            raise RunFileError(f"{where}: appDirPath {app_dir} is not a folder")
        app_id = str(app.get("appID") or app_dir.name)
        if app_id in seen:
            raise RunFileError(f"{where}: app id {app_id!r} is used twice")
        seen.add(app_id)
        merged = {**common, **{k: v for k, v in app.items() if v not in (None, "", [])}}
        specs.append(_spec(app, merged, common, app_id, app_dir, base, where))
    return specs


def _spec(
    app: dict[str, Any],
    merged: dict[str, Any],
    common: dict[str, Any],
    app_id: str,
    app_dir: Path,
    base: Path,
    where: str,
) -> AppSpec:
    command = app.get("command") or []
    if isinstance(command, str):
        command = ["sh", "-c", command]
    if not command:
        raise RunFileError(f"{where}: command is required (Pillion runs no sidecar without its app)")
    args = ["--app-id", app_id]
    # Resources: the app's own paths, else <appDirPath>/.dapr/resources, else common's.
    resources = _paths(app, app_dir) or (
        [app_dir / ".dapr" / "resources"]
        if (app_dir / ".dapr" / "resources").is_dir()
        else _paths(common, base)
    )
    for folder in resources:
        args += ["--resources-path", str(folder)]
    config = app.get("configFilePath")
    config_path = app_dir / str(config) if config else app_dir / ".dapr" / "config.yaml"
    if not config and not config_path.is_file() and common.get("configFilePath"):
        config_path = base / str(common["configFilePath"])
    if config_path.is_file():
        args += ["--config", str(config_path)]
    flags = {
        "appPort": "--app-port",
        "appProtocol": "--app-protocol",
        "appChannelAddress": "--app-channel-address",
        "daprHTTPPort": "--dapr-http-port",
        "daprGRPCPort": "--dapr-grpc-port",
        "daprInternalGRPCPort": "--dapr-internal-grpc-port",
        "metricsPort": "--metrics-port",
        "logLevel": "--log-level",
        "maxBodySize": "--max-body-size",
        "appHealthCheckPath": "--app-health-check-path",
        "appHealthProbeInterval": "--app-health-probe-interval",
        "appHealthProbeTimeout": "--app-health-probe-timeout",
        "appHealthThreshold": "--app-health-threshold",
        "placementHostAddress": "--placement-host-address",
        "schedulerHostAddress": "--scheduler-host-address",
        "unixDomainSocket": "--unix-domain-socket",
        "appMaxConcurrency": "--app-max-concurrency",
        "readBufferSize": "--read-buffer-size",
        "profilePort": "--profile-port",
    }
    for key, flag in flags.items():
        if merged.get(key) not in (None, ""):
            args.append(f"{flag}={_text(merged[key])}")
    for key, flag in (
        ("enableApiLogging", "--enable-api-logging"),
        ("enableAppHealthCheck", "--enable-app-health-check"),
    ):
        if merged.get(key) not in (None, ""):
            args.append(f"{flag}={_text(merged[key])}")
    if merged.get("appSSL") in (True, "true"):
        args.append("--app-ssl")
    if merged.get("enableProfiling") in (True, "true"):
        args.append("--enable-profiling")
    env = {str(k): _text(v) for k, v in (common.get("env") or {}).items()}
    env.update({str(k): _text(v) for k, v in (app.get("env") or {}).items()})
    http_port = merged.get("daprHTTPPort")
    destinations = []
    for key, default in (("appLogDestination", "fileAndConsole"), ("daprdLogDestination", "file")):
        value = str(merged.get(key) or default).lower()
        if value not in _DESTINATIONS:
            raise RunFileError(f"{where}: {key} must be console, file or fileAndConsole, not {value!r}")
        destinations.append(value)
    return AppSpec(
        app_id,
        app_dir,
        [str(c) for c in command],
        args,
        env,
        int(http_port) if http_port else None,
        destinations[0],
        destinations[1],
    )


def _die_with_parent() -> None:
    """In the child before exec: its own process group (Ctrl-C reaches only this process, which
    stops the apps in order), and SIGTERM if this process dies without doing so."""
    os.setpgrp()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class _Output:
    """Where one app's lines go: console and/or its log files (without the prefix)."""

    def __init__(self, spec: AppSpec) -> None:
        self.spec = spec
        self.files: dict[str, TextIO] = {}
        stamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
        folder = spec.app_dir / ".dapr" / "logs"
        for kind, destination in (("app", spec.app_log), ("daprd", spec.daprd_log)):
            if destination in ("file", "fileandconsole"):
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"{spec.app_id}_{kind}_{stamp}.log"
                spec.log_files[kind] = path
                self.files[kind] = path.open("a", encoding="utf-8", errors="replace")
        self.app_prefix = f"== APP - {spec.app_id} == "

    def line(self, text: str) -> None:
        kind = "app" if text.startswith(self.app_prefix) else "daprd"
        bare = text.split(" == ", 1)[1] if text.startswith("== ") else text
        destination = self.spec.app_log if kind == "app" else self.spec.daprd_log
        # What the user must see whatever the destination: trouble, and the sidecar's own lines.
        important = kind == "daprd" and (
            bare.startswith("pillion: ") or any(w in bare for w in (" WARNING ", " ERROR ", " CRITICAL "))
        )
        if destination != "file" or important:
            sys.stdout.write(text if text.startswith("== ") else f"== PILLION - {self.spec.app_id} == {text}")
            sys.stdout.flush()
        handle = self.files.get(kind)
        if handle is not None:
            handle.write(bare)
            handle.flush()

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()


async def _pump(stream: asyncio.StreamReader, output: _Output) -> None:
    while raw := await stream.readline():
        output.line(
            raw.decode("utf-8", "replace") if raw.endswith(b"\n") else raw.decode("utf-8", "replace") + "\n"
        )


async def _sidecar_listening(port: int, process: asyncio.subprocess.Process) -> bool:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline and process.returncode is None:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return True
    return False


class MultiRun:
    def __init__(self, specs: list[AppSpec], run_file: Path) -> None:
        self.specs = specs
        self.run_file = run_file
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.outputs: dict[str, _Output] = {}
        self.pumps: list[asyncio.Task[None]] = []
        self.stopping = False

    def say(self, text: str) -> None:
        print(f"== PILLION == {text}", flush=True)

    async def start(self, spec: AppSpec) -> None:
        port = spec.http_port or free_port()
        args = [*spec.args]
        if spec.http_port is None:
            args.append(f"--dapr-http-port={port}")
        argv = [
            sys.executable,
            "-m",
            "runtime",
            "run",
            *args,
            "--output-label",
            spec.app_id,
            "--",
            *spec.command,
        ]
        output = _Output(spec)
        self.outputs[spec.app_id] = output
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=spec.app_dir,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **spec.env},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            raise RunFileError(f"cannot start app {spec.app_id!r}: {exc}") from None
        self.processes[spec.app_id] = process
        assert process.stdout is not None and process.stderr is not None
        self.pumps += [
            asyncio.create_task(_pump(process.stdout, output)),
            asyncio.create_task(_pump(process.stderr, output)),
        ]
        if not await _sidecar_listening(port, process):
            raise RunFileError(f"app {spec.app_id!r} did not start (see its output above)")
        self.say(f'Started pillion with app id "{spec.app_id}". HTTP Port: {port}')
        for kind, path in spec.log_files.items():
            self.say(f"{spec.app_id}: {'app' if kind == 'app' else 'sidecar'} log in {path}")

    def stop_all(self) -> None:
        if self.stopping:
            # A second signal: the apps get it too, which makes each `pillion run` kill its app.
            for process in self.processes.values():
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.send_signal(signal.SIGTERM)
            return
        self.stopping = True
        self.say("stopping every app")
        for process in self.processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop_all)
        failed = 0
        try:
            for spec in self.specs:
                if self.stopping:
                    break
                try:
                    await self.start(spec)
                except RunFileError as exc:
                    self.say(str(exc))
                    self.stop_all()
                    failed = 1
                    break
            codes = await asyncio.gather(*(self._watch(app_id, p) for app_id, p in self.processes.items()))
            failed = failed or next((c for c in codes if c != 0), 0)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            if self.pumps:
                await asyncio.wait(self.pumps, timeout=2)
            for output in self.outputs.values():
                output.close()
        return failed

    async def _watch(self, app_id: str, process: asyncio.subprocess.Process) -> int:
        code = await process.wait()
        if self.stopping and code in (0, 128 + signal.SIGTERM, 128 + signal.SIGINT):
            self.say(f"app {app_id!r} stopped")
            return 0
        self.say(f"app {app_id!r} exited with code {code}")
        return code


def run_file(given: str) -> int:
    try:
        path = find_run_file(given)
        specs = parse_run_file(path)
    except RunFileError as exc:
        print(f"pillion: {exc}", file=sys.stderr)
        return 1
    return asyncio.run(MultiRun(specs, path).run())

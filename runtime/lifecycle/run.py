"""``pillion run``: the sidecar and its app as one unit with a shared fate.

The sidecar runs in this process and is serving before the app starts, so an app that calls it
first thing never races it. The app runs as a child in its own process group:

* the app exits -> the sidecar drains, whatever the app left running is stopped, and this process
  exits with the app's exit code;
* the sidecar fails -> the app and everything it started get SIGTERM, then SIGKILL after a grace;
* SIGINT/SIGTERM here -> forwarded to the app's process group; SIGKILL after the grace period
  (or at once on a second signal);
* this process is SIGKILLed -> a watchdog (``runtime.lifecycle.app_processes``, in its own session) sees its
  pipe close and stops the app and its descendants the same way.

"Everything the app started" is every descendant, also one that double-forked and called
``setsid()``: see runtime/lifecycle/app_processes.py for how they are found.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import uuid
from collections.abc import Sequence

from runtime.lifecycle import app_processes
from runtime.lifecycle.deadlines import STOP_SLACK, exit_after
from runtime.lifecycle.sidecar import Sidecar, SidecarOptions, StartupError

log = logging.getLogger("pillion.run")
APP_PREFIX = b"== APP == "


def app_environment(options: SidecarOptions, api_token: str | None, grpc_port: int | None) -> dict[str, str]:
    from runtime.grpc import SIDECAR_ONLY

    env = {name: value for name, value in os.environ.items() if name not in SIDECAR_ONLY}
    env.update(
        {
            "APP_ID": options.app_id,
            "DAPR_HTTP_PORT": str(options.http_port),
            "PILLION_HTTP_PORT": str(options.http_port),
        }
    )
    if grpc_port is not None:
        env["DAPR_GRPC_PORT"] = str(grpc_port)
    if options.app_port is not None:
        env["APP_PORT"] = str(options.app_port)
    env["APP_CHANNEL_ADDRESS"] = options.app_channel_address
    env["APP_PROTOCOL"] = "grpc" if options.app_protocol == "grpc" else options.invocation.app_protocol
    if options.enable_metrics:
        env["DAPR_METRICS_PORT"] = str(options.metrics_port)
    if api_token:
        env["DAPR_API_TOKEN"] = api_token
    return env


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def stop_group(pgid: int, grace: float) -> None:
    """SIGTERM the group, wait up to ``grace`` seconds, then SIGKILL whatever is left."""
    if not group_alive(pgid):
        return
    signal_group(pgid, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while group_alive(pgid) and loop.time() < deadline:  # noqa: ASYNC110 (no event for a group)
        await asyncio.sleep(0.05)
    if group_alive(pgid):
        log.warning("app process group %d still running after %.1fs: SIGKILL", pgid, grace)
        signal_group(pgid, signal.SIGKILL)


async def _pump(stream: asyncio.StreamReader, out: int, prefix: bytes) -> None:
    """Copy the app's output line by line with a prefix, so it reads apart from the sidecar's."""
    while line := await stream.readline():
        if not line.endswith(b"\n"):
            line += b"\n"
        os.write(out, prefix + line)


class AppSupervisor:
    def __init__(
        self, command: Sequence[str], env: dict[str, str], grace: float, prefix: bytes = APP_PREFIX
    ) -> None:
        self.prefix = prefix
        self.command = list(command)
        # Inherited by every descendant of the app, so that each can be found again.
        self.marker = uuid.uuid4().hex
        self.env = {**env, app_processes.MARKER: self.marker}
        self.grace = grace
        self.process: asyncio.subprocess.Process | None = None
        self.watchdog: asyncio.subprocess.Process | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self._signals_seen = 0

    async def start(self) -> None:
        if not app_processes.become_subreaper():
            log.warning("processes the app detaches (setsid) cannot be adopted on this system")
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.command,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                preexec_fn=os.setpgrp,  # its own process group (uvloop has no process_group=)
            )
        except OSError as exc:
            raise StartupError(f"cannot start the app {self.command[0]!r}: {exc.strerror or exc}") from None
        pgid = self.process.pid
        self.watchdog = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "runtime.lifecycle.app_processes",
            self.marker,
            str(os.getpid()),
            f"{self.grace:g}",
            stdin=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self._pumps = [
            asyncio.create_task(_pump(self.process.stdout, sys.stdout.fileno(), self.prefix)),
            asyncio.create_task(_pump(self.process.stderr, sys.stderr.fileno(), self.prefix)),
        ]
        log.info("app started (pid %d): %s", pgid, " ".join(self.command))

    @property
    def pgid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def signalled(self) -> bool:
        return self._signals_seen > 0

    def forward(self, sig: int) -> bool:
        """Pass a signal on to the app; True for the first one. The app then has its grace period
        to exit before it is killed, and a second signal kills it at once."""
        self._signals_seen += 1
        if self._signals_seen > 1:
            log.warning("second signal: killing the app")
            signal_group(self.pgid, signal.SIGKILL)
            return False
        log.info("forwarding %s to the app", signal.Signals(sig).name)
        signal_group(self.pgid, sig)
        asyncio.get_running_loop().call_later(self.grace, self._kill_late)
        return True

    def _kill_late(self) -> None:
        if self.process is not None and self.process.returncode is None:
            log.warning("the app is still running %.1fs after the signal: SIGKILL", self.grace)
            signal_group(self.pgid, signal.SIGKILL)

    async def _stop_strays(self) -> None:
        """Descendants that left the app's group (double fork, setsid) or outlived the app."""
        spare = [self.watchdog.pid] if self.watchdog is not None else []
        strays = [p for p in app_processes.find(self.marker, os.getpid(), spare) if p.pid != self.pgid]
        if not strays:
            return
        log.info(
            "stopping %d processes the app left running: %s",
            len(strays),
            " ".join(str(p.pid) for p in strays),
        )
        killed = await asyncio.to_thread(app_processes.stop, strays, self.grace)
        if killed:
            log.warning(
                "processes %s ignored SIGTERM for %.1fs: killed", " ".join(map(str, killed)), self.grace
            )

    async def wait(self) -> int:
        assert self.process is not None
        return await self.process.wait()

    async def stop(self) -> None:
        """Leave nothing behind: the app's group, every other descendant, then the watchdog."""
        if self.process is not None:
            await stop_group(self.pgid, self.grace)
            with contextlib.suppress(ProcessLookupError):
                await self.process.wait()
            await self._stop_strays()
        if self.watchdog is not None:
            with contextlib.suppress(ProcessLookupError):
                self.watchdog.kill()
            await self.watchdog.wait()
        # The output pipes close once every process of the group that held them is gone.
        if self._pumps:
            _, pending = await asyncio.wait(self._pumps, timeout=1)
            for task in pending:
                task.cancel()


def exit_code(returncode: int) -> int:
    """A shell's convention: killed by signal N -> 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


async def run(
    options: SidecarOptions,
    command: Sequence[str],
    grace: float,
    api_token: str | None,
    app_prefix: bytes = APP_PREFIX,
) -> int:
    sidecar = Sidecar(options)
    serving = asyncio.create_task(sidecar.serve(handle_signals=False))
    while not sidecar.serving:
        if serving.done():
            exit_after(STOP_SLACK, "start-up failed")
            serving.result()  # raises the start-up error
            return 1
        await asyncio.sleep(0.005)

    app = AppSupervisor(
        command,
        app_environment(options, api_token, sidecar.grpc.port if sidecar.grpc else None),
        grace,
        app_prefix,
    )
    try:
        await app.start()
    except StartupError:
        sidecar.request_stop()
        await serving
        raise
    # As `dapr run` records them in the extended metadata.
    sidecar.extended.update(
        {"appPID": str(app.pgid), "appCommand": " ".join(command), "cliPID": str(os.getpid())}
    )
    # However it stops, this process ends within this bound: the app's grace, the drain, the rest.
    stop_bound = grace + options.drain_timeout + STOP_SLACK
    loop = asyncio.get_running_loop()

    def on_signal(sig: int) -> None:
        if app.forward(sig):
            exit_after(stop_bound, signal.Signals(sig).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    app_exit = asyncio.create_task(app.wait())
    try:
        done, _ = await asyncio.wait({app_exit, serving}, return_when=asyncio.FIRST_COMPLETED)
        if not app.signalled:
            exit_after(stop_bound, "the app exited" if app_exit in done else "the sidecar stopped")
        if app_exit in done:
            code = exit_code(app_exit.result())
            log.info("app exited with code %d; stopping the sidecar", code)
            sidecar.request_stop()
            await serving
            return code
        error = serving.exception()
        if error is not None:
            log.error("the sidecar failed (%s); stopping the app", error)
            return 1
        log.info("the sidecar was shut down; stopping the app")
        await app.stop()
        return exit_code(await app_exit)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await app.stop()
        if not serving.done():
            sidecar.request_stop()
            with contextlib.suppress(Exception):
                await serving

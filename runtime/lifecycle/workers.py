"""``--workers N``: N processes serve the HTTP API on one port, so a busy API can use more than one
core (docs/workers.md).

The sidecar started by the user is the primary: it does everything a sidecar does. It binds the
API port with ``SO_REUSEPORT`` and starts N-1 API workers, which bind the same port, so the kernel
spreads new connections over the processes. A worker runs the same components and serves the API
(state, publish, invoke, secrets, bindings, locks, configuration reads); it does not deliver to the
app, run input bindings, probe the app, serve gRPC or metrics, or take calls from other sidecars.
What only the primary knows (metadata and subscriptions, shutdown, configuration subscriptions, the
admin API) a worker forwards to the primary's private loopback port.

Workers are started with the primary's options on their standard input (pickled: parent and
child run the same code), die with the primary (``PR_SET_PDEATHSIG``), are started again when one
exits unexpectedly, and are stopped (SIGTERM, then SIGKILL after the drain timeout) before the
primary stops its own components.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import pickle
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.lifecycle.sidecar import SidecarOptions

log = logging.getLogger("pillion.workers")

_PR_SET_PDEATHSIG = 1
# A worker that keeps dying is started again no faster than this.
_RESTART_PAUSE = 1.0


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ApiWorkers:
    """The primary's N-1 API worker processes."""

    def __init__(self, options: SidecarOptions, http_port: int, primary_port: int) -> None:
        self._count = options.workers - 1
        # What a worker is: the same sidecar, on the port the primary bound, one process, told
        # where the primary answers.
        self._payload = pickle.dumps(
            dataclasses.replace(options, http_port=http_port, workers=1, primary_port=primary_port)
        )
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes.values()]

    async def start(self) -> None:
        for slot in range(self._count):
            await self._spawn(slot)
        self._supervisor = asyncio.create_task(self._supervise())

    async def _spawn(self, slot: int) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "runtime.cli.worker",
            stdin=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        assert process.stdin is not None
        process.stdin.write(self._payload)
        process.stdin.close()
        self._processes[slot] = process
        log.info("API worker %d started (pid %d)", slot + 1, process.pid)

    async def _supervise(self) -> None:
        while not self._stopping:
            waits = {asyncio.ensure_future(p.wait()): slot for slot, p in self._processes.items()}
            try:
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for future in waits:
                    future.cancel()
            for future in done:
                slot = waits[future]
                code = self._processes[slot].returncode
                if self._stopping:
                    return
                log.error("API worker %d exited with code %s; starting it again", slot + 1, code)
                await asyncio.sleep(_RESTART_PAUSE)
                if not self._stopping:
                    await self._spawn(slot)

    async def stop(self, drain_timeout: float) -> None:
        """SIGTERM every worker (each finishes its requests in flight), SIGKILL what is left."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        processes = list(self._processes.values())
        for process in processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
        try:
            async with asyncio.timeout(drain_timeout + 5):
                await asyncio.gather(*(p.wait() for p in processes))
        except TimeoutError:
            for process in processes:
                if process.returncode is None:
                    log.warning("API worker pid %d did not stop in time; killed", process.pid)
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            await asyncio.gather(*(p.wait() for p in processes))

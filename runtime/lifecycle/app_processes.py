"""Every process an app started, found and stopped however it tried to get away.

An app's process group is not enough: a child that double-forks and calls ``setsid()`` leaves both
the group and the tree. Two things find it anyway:

* ``pillion run`` makes itself a *child subreaper* (Linux ``PR_SET_CHILD_SUBREAPER``), so an orphaned
  descendant of the app is re-parented to ``pillion run`` instead of to init: it stays in the tree.
* The app's environment carries a marker (``PILLION_RUN_ID``) that its descendants inherit; a process
  still carrying it is one of them, even after ``pillion run`` itself is gone (the watchdog's case,
  below). A descendant that both leaves the tree and scrubs its environment is the one that can
  escape; only a cgroup could hold it, and none can be relied on outside containers.

Run as ``python -m runtime.lifecycle.app_processes MARKER PID GRACE`` this module is the watchdog of
``pillion run``: it reads its stdin until EOF (``pillion run`` is gone, however it died), noting
the processes under ``PID`` as it waits, then stops every one of them and every marked process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import sys
import time
from collections.abc import Iterable

import psutil

MARKER = "PILLION_RUN_ID"
_PR_SET_CHILD_SUBREAPER = 36
# How often the watchdog notes the processes under ``pillion run``.
_SNAPSHOT_EVERY = 0.2


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux); False where the kernel has no such thing."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def _marked(marker: str) -> Iterable[psutil.Process]:
    me = os.getpid()
    for process in psutil.process_iter():
        if process.pid == me:
            continue
        with contextlib.suppress(psutil.Error):
            if process.environ().get(MARKER) == marker:
                yield process


def find(marker: str, root: int, spare: Iterable[int] = ()) -> list[psutil.Process]:
    """The processes under ``root`` (``spare`` and their descendants excepted) and every process
    carrying ``marker``."""
    found: dict[int, psutil.Process] = {}
    spared = set(spare)
    with contextlib.suppress(psutil.Error):
        for process in psutil.Process(root).children(recursive=True):
            if process.pid not in spared and not _under(process, spared):
                found[process.pid] = process
    for process in _marked(marker):
        found.setdefault(process.pid, process)
    return list(found.values())


def _under(process: psutil.Process, ancestors: set[int]) -> bool:
    try:
        return any(parent.pid in ancestors for parent in process.parents())
    except psutil.Error:
        return False


def stop(processes: list[psutil.Process], grace: float, reap: bool = True) -> list[int]:
    """SIGTERM ``processes``, SIGKILL those still there after ``grace`` seconds; blocking. With
    ``reap``, the ones that were our children are waited for (``psutil`` reaps them), so no zombie
    stays. Returns the pids that had to be killed."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(processes, timeout=grace) if reap else ([], _wait(processes, grace))
    killed = []
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
            killed.append(process.pid)
    if reap:
        psutil.wait_procs(alive, timeout=1)
    return killed


def _wait(processes: list[psutil.Process], grace: float) -> list[psutil.Process]:
    deadline = time.monotonic() + grace
    alive = processes
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _running(p)]
    return [p for p in alive if _running(p)]


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def watch(marker: str, root: int, grace: float) -> None:
    """The watchdog: wait for EOF on stdin, then stop what ``root`` left behind."""
    seen: dict[int, psutil.Process] = {}
    me = os.getpid()
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], _SNAPSHOT_EVERY)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break
        for process in find(marker, root, spare=[me]):
            seen.setdefault(process.pid, process)
    # A process seen earlier counts only if it is still the same one (pids are reused).
    left = {p.pid: p for p in seen.values() if _running(p)}
    for process in _marked(marker):
        left.setdefault(process.pid, process)
    stop(list(left.values()), grace, reap=False)


if __name__ == "__main__":
    watch(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))

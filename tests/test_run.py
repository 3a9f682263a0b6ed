"""``pillion run``: the app and its sidecar share their fate, and nothing is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

APP = textwrap.dedent(
    """
    import json, os, subprocess, sys, time, urllib.request
    port = os.environ["DAPR_HTTP_PORT"]
    # The sidecar must already answer: no retry loop here on purpose.
    urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{port}/v1.0/state/statestore", method="POST",
        data=json.dumps([{"key": "k", "value": sys.argv[1]}]).encode()))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1.0/state/statestore/k") as r:
        print("read", r.read().decode(), flush=True)
    names = ("APP_ID", "DAPR_HTTP_PORT", "PILLION_HTTP_PORT", "APP_PORT")
    env = {k: v for k, v in os.environ.items() if k in names}
    print("env", json.dumps(env, sort_keys=True), flush=True)
    child = subprocess.Popen(["sleep", "300"])
    with open(sys.argv[2], "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    mode = sys.argv[3]
    if mode == "exit":
        sys.exit(7)
    time.sleep(300)
    """
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its parent counts as gone
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids: list[int], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if alive(p)]}"
        time.sleep(0.05)


def start(tmp_path: Path, mode: str, *extra: str) -> tuple[subprocess.Popen[str], Path]:
    app = tmp_path / "app.py"
    app.write_text(APP)
    pids = tmp_path / "pids"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtime",
            "run",
            "--app-id",
            "runner",
            "--data-dir",
            str(tmp_path / "d"),
            "--app-grace-period",
            "2",
            *extra,
            "--",
            sys.executable,
            str(app),
            "hello",
            str(pids),
            mode,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    return proc, pids


def read_pids(path: Path, proc: subprocess.Popen[str]) -> list[int]:
    deadline = time.monotonic() + 20
    while not path.exists() or not path.read_text():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return [int(p) for p in path.read_text().split()]


def test_app_exit_code_is_the_exit_code_and_children_are_stopped(tmp_path: Path) -> None:
    proc, pid_file = start(tmp_path, "exit")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 7, err
    assert '== APP == read "hello"' in out
    env_line = next(line for line in out.splitlines() if "== APP == env" in line)
    assert '"APP_ID": "runner"' in env_line and '"PILLION_HTTP_PORT"' in env_line
    assert "APP_PORT" not in env_line
    assert "== PILLION ==" in err
    wait_gone(read_pids(pid_file, proc))  # the app's own child did not outlive it


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_are_forwarded_to_the_app(tmp_path: Path, sig: int) -> None:
    proc, pid_file = start(tmp_path, "sleep")
    pids = read_pids(pid_file, proc)
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig  # the app died of the forwarded signal
    wait_gone(pids)


def test_sigkill_of_pillion_run_leaves_no_orphan(tmp_path: Path) -> None:
    proc, pid_file = start(tmp_path, "sleep")
    pids = read_pids(pid_file, proc)
    proc.kill()
    proc.wait()
    wait_gone(pids, timeout=10)


def test_sidecar_shutdown_stops_the_app(tmp_path: Path) -> None:
    proc, pid_file = start(tmp_path, "sleep")
    pids = read_pids(pid_file, proc)
    err_line = ""
    assert proc.stderr is not None
    while "with its sidecar on" not in err_line:
        err_line = proc.stderr.readline()
    url = err_line.strip().rsplit(" ", 1)[1]
    subprocess.run(["curl", "-s", "-X", "POST", f"{url}/v1.0/shutdown"], check=True)
    proc.communicate(timeout=30)
    wait_gone(pids)
    assert proc.returncode == 128 + signal.SIGTERM


def test_missing_app_command_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime",
            "run",
            "--app-id",
            "x",
            "--data-dir",
            str(tmp_path),
            "--",
            "/nonexistent/app",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "cannot start the app '/nonexistent/app'" in result.stderr
    assert "Traceback" not in result.stderr


# An app that leaves its group and its tree: a grandchild that double-forks and calls setsid(),
# then the app goes on (sleep) or exits at once (exit).
ESCAPING_APP = textwrap.dedent(
    """
    import os, sys, time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            with open(sys.argv[1], "w") as f:
                f.write(str(os.getpid()))
            os.closerange(0, 3)
            time.sleep(300)
        os._exit(0)
    os.wait()
    while not os.path.exists(sys.argv[1]) or not open(sys.argv[1]).read():
        time.sleep(0.01)
    if sys.argv[2] == "sleep":
        time.sleep(300)
    """
)


def start_escaping(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], int]:
    app = tmp_path / "escaping.py"
    app.write_text(ESCAPING_APP)
    pid_file = tmp_path / "grandchild"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtime",
            "run",
            "--app-id",
            "escaping",
            "--data-dir",
            str(tmp_path / "d"),
            "--app-grace-period",
            "2",
            "--",
            sys.executable,
            str(app),
            str(pid_file),
            mode,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    deadline = time.monotonic() + 20
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the app did not start its grandchild"
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    assert os.getsid(grandchild) != os.getsid(proc.pid), "the grandchild is in a session of its own"
    return proc, grandchild


def test_a_detached_grandchild_is_stopped_when_the_app_exits(tmp_path: Path) -> None:
    proc, grandchild = start_escaping(tmp_path, "exit")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopping 1 processes the app left running" in err
    wait_gone([grandchild], timeout=5)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_detached_grandchild_is_stopped_when_pillion_run_is_signalled(tmp_path: Path, sig: int) -> None:
    proc, grandchild = start_escaping(tmp_path, "sleep")
    proc.send_signal(sig)
    proc.wait(timeout=30)
    wait_gone([grandchild], timeout=2 + 5)

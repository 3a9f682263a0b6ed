"""The sample order flow (samples/run-flow) end to end on both component sets.

Each run starts checkout (Node) and fulfilment (Go) with their own `pillion run`, posts orders
and checks the outcome in the shared state store; the script's exit code is the verdict.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.support import ROOT

FLOW = ROOT / "samples" / "run_flow.py"
CHECKS = 9


def need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"the sample flow needs {tool}: install {package} (.ci/run does)")


@pytest.fixture(scope="module")
def fulfilment_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once for the module, so each flow run skips `go build`."""
    need("go", "golang-go (Go 1.19 or newer)")
    need("node", "nodejs (Node.js 18 or newer)")
    binary = tmp_path_factory.mktemp("fulfilment") / "fulfilment"
    subprocess.run(
        ["go", "build", "-o", str(binary), "."], cwd=ROOT / "samples" / "fulfilment", check=True, timeout=120
    )
    return binary


def run_flow(
    tmp_path: Path, binary: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(FLOW), "--workdir", str(tmp_path / "flow")]
    command += ["--fulfilment-binary", str(binary), "--timeout", "20", *args]
    full_env = {**os.environ, "PILLION_PYTHON": sys.executable, **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=90, env=full_env, check=False)


def assert_passed(result: subprocess.CompletedProcess[str], components: str) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"PASS: {CHECKS} checks on the {components} components" in result.stdout
    assert "FAIL" not in result.stdout


def test_flow_on_the_embedded_components(tmp_path: Path, fulfilment_binary: Path) -> None:
    result = run_flow(tmp_path, fulfilment_binary, "--components", "embedded")
    assert_passed(result, "embedded")
    # Both sidecars used the one pair of SQLite files in the directory they were started in.
    assert sorted(p.name for p in (tmp_path / "flow" / ".pillion-sample").glob("*.db")) == [
        "pubsub.db",
        "state.db",
    ]


def test_flow_on_the_redis_components(tmp_path: Path, fulfilment_binary: Path, redis_url: str) -> None:
    if not os.environ.get("REDIS_URL"):
        # The private server is shared with the other tests, some of which use a topic "orders":
        # a database of its own keeps their streams out of the flow.
        redis_url = urlunsplit(urlsplit(redis_url)._replace(path="/3"))
    result = run_flow(tmp_path, fulfilment_binary, "--components", "redis", "--redis-url", redis_url)
    assert_passed(result, "redis")
    generated = (tmp_path / "flow" / "components" / "pubsub.yaml").read_text()
    assert f'"{urlsplit(redis_url).hostname}:{urlsplit(redis_url).port}"' in generated


def test_a_broken_flow_fails_with_the_reason(tmp_path: Path, fulfilment_binary: Path) -> None:
    # fulfilment cannot read its secret from a store that does not exist, so it exits at start-up.
    result = run_flow(tmp_path, fulfilment_binary, env={"SECRET_STORE": "missing"})
    assert result.returncode == 1
    assert "FAIL  the flow ran" in result.stdout
    assert "fulfilment exited with 1 while starting" in result.stdout
    assert "ERR_SECRET_STORE_NOT_FOUND" in result.stdout

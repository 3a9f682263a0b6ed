"""Resource files, Configuration files and ``pillion secrets`` runs for the secrets tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.support import ROOT, free_port, write_resources


class SecretRef:
    """A metadata item given as ``secretKeyRef``."""

    def __init__(self, name: str, key: str = "") -> None:
        self.name = name
        self.key = key


Metadata = Mapping[str, str | SecretRef]


def component(name: str, type_name: str, metadata: Metadata | None = None, secret_store: str = "") -> str:
    items: list[dict[str, Any]] = []
    for field, value in (metadata or {}).items():
        if isinstance(value, SecretRef):
            ref = {"name": value.name, **({"key": value.key} if value.key else {})}
            items.append({"name": field, "secretKeyRef": ref})
        else:
            items.append({"name": field, "value": value})
    doc: dict[str, Any] = {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": name},
        "spec": {"type": type_name, "version": "v1", "metadata": items},
    }
    if secret_store:
        doc["auth"] = {"secretStore": secret_store}
    return yaml.safe_dump(doc, sort_keys=False)


def configuration(spec: dict[str, Any], name: str = "appconfig") -> str:
    doc = {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Configuration",
        "metadata": {"name": name},
        "spec": spec,
    }
    return yaml.safe_dump(doc, sort_keys=False)


def write_config(workdir: Path, spec: dict[str, Any]) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(configuration(spec))
    return path


def sidecar_to_exit(
    workdir: Path,
    resources: dict[str, str],
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``pillion serve`` expecting start-up to fail."""
    folder = write_resources(workdir / "resources", resources)
    args = ["--app-id", "a", "--resources-path", str(folder), "--dapr-http-port", str(free_port())]
    args += ["--data-dir", str(workdir / "data"), *(extra_args or [])]
    return subprocess.run(
        [sys.executable, "-m", "runtime", "serve", *args],
        capture_output=True,
        check=False,
        text=True,
        timeout=20,
        cwd=workdir,
        env={**os.environ, **(env or {})},
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a failed start-up prints, after checking it is exactly one and no traceback."""
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("pillion:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def secrets_cli(
    *args: str | Path,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    preexec: Any = None,
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "runtime", "secrets", *map(str, args)],
        capture_output=True,
        check=False,
        text=True,
        timeout=20,
        cwd=ROOT,
        env=full_env,
        input=stdin if stdin is not None else "",
        preexec_fn=preexec,
    )

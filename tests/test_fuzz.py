"""Schemathesis against a live sidecar on each state store (issues 7 and 13).

Every documented operation but shutdown is fuzzed with data that fits docs/openapi.yaml and data
that does not. A response fails the run when its status, content type, headers or body break the
spec, when it is a 5xx the spec does not declare for that operation (a 500 must carry one of the
``errorCode``s listed for it: ``ERR_INTERNAL`` never is), when a body shows a Python traceback, or
when a request takes longer than ``REQUEST_TIMEOUT``. Afterwards the store must still work, and a
SQLite database must pass ``PRAGMA integrity_check``.

The run in the suite is short. ``PILLION_FUZZ_EXAMPLES`` raises the number of examples per
operation and mode; docs/reliability.md gives the longer command.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, CheckContext, GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.result import Err
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests import pubsub_support
from tests.secrets_support import component as secret_component
from tests.state_support import STORES
from tests.support import ROOT, SidecarProcess, free_port, start_sidecar

SPEC = ROOT / "docs" / "openapi.yaml"
EXAMPLES = int(os.environ.get("PILLION_FUZZ_EXAMPLES", "5"))
REQUEST_TIMEOUT = 10.0
# Shutdown would end the run; /metrics is another server (tests/test_metrics.py covers it).
SKIPPED = {("POST", "/v1.0/shutdown"), ("GET", "/metrics")}
# Each state store is fuzzed with the broker of the same kind beside it (PostgreSQL, which has
# none, with the embedded one).
BROKERS = {
    "in-memory": pubsub_support.in_memory,
    "sqlite": pubsub_support.sqlite,
    "redis": pubsub_support.redis,
    "postgresql": pubsub_support.sqlite,
}
SERVICES = {"redis": "redis_url", "postgresql": "postgres_url"}
SECRETS = {"db-password": "hunter2", "nested": {"a": "1", "b": ["x", "y"]}}


@cache
def raw_spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    return loaded


def _resolve(node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = raw_spec()
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _error_codes(node: Any) -> set[str]:
    """Every ``errorCode`` enum under a response schema, through $ref, allOf and anyOf."""
    node = _resolve(node)
    found: set[str] = set()
    if isinstance(node, dict):
        code = node.get("properties", {}).get("errorCode", {})
        found |= set(_resolve(code).get("enum", []))
        for value in node.values():
            found |= _error_codes(value)
    elif isinstance(node, list):
        for value in node:
            found |= _error_codes(value)
    return found


def declared_codes(case: Case[Any], status: int) -> set[str]:
    operation = raw_spec()["paths"][case.operation.path][case.method.lower()]
    response = operation["responses"].get(str(status))
    return _error_codes(response) if response is not None else set()


def documented_server_errors(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """A 5xx is a failure unless the spec lists its status and errorCode for this operation."""
    if response.status_code < 500:
        return None
    allowed = declared_codes(case, response.status_code)
    assert allowed, f"undocumented {response.status_code}: {response.content[:500]!r}"
    if case.method.upper() == "HEAD":
        return None  # the answer to a HEAD has no body to carry the errorCode
    body = json.loads(response.content)
    assert body.get("errorCode") in allowed, (
        f"{response.status_code} {body.get('errorCode')} is not among the documented {sorted(allowed)}: "
        f"{body.get('message')}"
    )
    return None


def no_traceback(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    assert b"Traceback (most recent call last)" not in response.content, response.content[:2000]
    return None


def invalid_json_rejected(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """Schemathesis's negative-data check, for JSON bodies only. Query values, headers and text
    bodies are strings on the wire, and Pillion, like daprd, takes any string there (an option it
    does not know is refused by the store with the 500 the contract names) and ignores query
    parameters it does not know."""
    body = case.meta.components.get(ParameterLocation.BODY) if case.meta is not None else None
    if body is None or not body.mode.is_negative or not (case.media_type or "").endswith("json"):
        return None
    return negative_data_rejection(ctx, response, case)


CHECKS: list[Callable[[CheckContext, Response, Case[Any]], bool | None]] = [
    documented_server_errors,
    no_traceback,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    invalid_json_rejected,
]


def known_names(path: str) -> dict[str, str]:
    """Path parameters naming the components this sidecar has, so requests get past the lookup."""
    if path.startswith("/v1.0/secrets/"):
        return {"store": "secretstore"}
    if "/state/" in path:
        return {"store": "statestore"}
    if "/publish/" in path or "/deadletters/" in path:
        return {"pubsub": "pubsub"}
    return {}


def fuzz(base_url: str) -> list[str]:
    """Fuzz every operation; the failures found, one text per operation that has any."""
    # Unsanitized output: a failure report must show the request as it was sent.
    config = schemathesis.Config.from_dict({"output": {"sanitization": {"enabled": False}}})
    schema = schemathesis.openapi.from_dict(raw_spec(), config=config)
    failures: list[str] = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()  # the spec itself is broken: tests/test_openapi.py says where
        operation = result.ok()
        if (operation.method.upper(), operation.path) in SKIPPED:
            continue
        fixed = known_names(operation.path)
        strategies = [
            operation.as_strategy(generation_mode=mode, path_parameters=params)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
            for params in ([fixed, {}] if fixed else [{}])
        ]

        @given(case=st.one_of(strategies))
        @settings(
            max_examples=EXAMPLES * len(strategies),
            deadline=None,
            database=None,
            derandomize=os.environ.get("PILLION_FUZZ_RANDOM") is None,
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Case[Any]) -> None:
            case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=REQUEST_TIMEOUT)

        try:
            run()
        except (Exception, FailureGroup) as exc:  # every operation gets its turn; all are reported
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    return failures


def resources(kind: str, workdir: Path, service_url: str) -> dict[str, str]:
    secrets_file = workdir / "secrets.json"
    secrets_file.write_text(json.dumps(SECRETS))
    return {
        "state.yaml": STORES[kind]("statestore", workdir, service_url),
        "pubsub.yaml": BROKERS[kind]("pubsub", workdir, service_url, {}),
        "secrets.yaml": secret_component(
            "secretstore", "secretstores.local.file", {"secretsFile": str(secrets_file)}
        ),
    }


@dataclass
class Fuzzed:
    kind: str
    proc: SidecarProcess
    metrics_port: int


@pytest.fixture(params=sorted(BROKERS))
def sidecar(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fuzzed]:
    kind: str = request.param
    url = str(request.getfixturevalue(SERVICES[kind])) if kind in SERVICES else ""
    metrics_port = free_port()
    proc = start_sidecar(
        tmp_path,
        resources=resources(kind, tmp_path, url),
        extra_args=["--metrics-port", str(metrics_port)],
    )
    yield Fuzzed(kind, proc, metrics_port)
    proc.stop()


@pytest.mark.timeout(60 + 40 * EXAMPLES)
def test_fuzzing_finds_nothing(sidecar: Fuzzed, tmp_path: Path) -> None:
    kind, proc = sidecar.kind, sidecar.proc
    failures = fuzz(proc.url)
    assert not failures, "\n\n".join(failures)
    assert proc.proc.poll() is None, proc.log()
    assert "Traceback" not in proc.log(), proc.log()
    # The store still works after the fuzzing: a round trip, and SQLite's own consistency check.
    with proc.client() as api:
        saved = api.post("/v1.0/state/statestore", json=[{"key": "after-fuzz", "value": {"ok": True}}])
        assert saved.status_code == 204, saved.text
        assert api.get("/v1.0/state/statestore/after-fuzz").json() == {"ok": True}
        assert api.get("/v1.0/healthz/outbound").status_code == 204
    if kind == "sqlite":
        with sqlite3.connect(tmp_path / "statestore.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    # Bad input must be refused as bad input, never reach a store and fail there.
    text = httpx.get(f"http://127.0.0.1:{sidecar.metrics_port}/metrics", timeout=10).text
    failures = [line for line in text.splitlines() if line.startswith("pillion_component_errors_total{")]
    assert not failures, failures

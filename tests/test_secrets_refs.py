"""secretKeyRef in component metadata: resolution in dependency order, one-line errors for every
broken reference, and secret values kept out of logs, /v1.0/metadata and error messages."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from tests.secrets_support import SecretRef, component, error_line, sidecar_to_exit
from tests.support import start_sidecar


def test_references_resolve_across_files_in_dependency_order(tmp_path: Path) -> None:
    db = tmp_path / "from-secret.db"
    chain_file = tmp_path / "chain.json"
    chain_file.write_text(json.dumps({"db": {"path": str(db)}}))
    resources = {
        # File order is the reverse of the order the components must start in.
        "a_state.yaml": component(
            "statestore", "state.sqlite", {"connectionString": SecretRef("db", "path")}, secret_store="chain"
        ),
        "b_chain.yaml": component(
            "chain",
            "secretstores.local.file",
            {"secretsFile": SecretRef("CHAIN_FILE"), "multiValued": "true"},
            secret_store="env",
        ),
        "c_env.yaml": component("env", "secretstores.local.env"),
    }
    sidecar = start_sidecar(tmp_path, resources=resources, env={"CHAIN_FILE": str(chain_file)})
    try:
        with sidecar.client() as client:
            assert client.post("/v1.0/state/statestore", json=[{"key": "k", "value": "v"}]).status_code == 204
            assert client.get("/v1.0/state/statestore/k").json() == "v"
            assert client.get("/v1.0/secrets/chain/db").json() == {"path": str(db)}
        assert db.exists()
    finally:
        sidecar.stop()


def _files(secrets: Mapping[str, object], multi: bool = False) -> dict[str, str]:
    metadata = {"secretsFile": "s.json", **({"multiValued": "true"} if multi else {})}
    return {
        "s.json": json.dumps(secrets),
        "files.yaml": component("files", "secretstores.local.file", metadata),
    }


def _state(ref: SecretRef, store: str = "files") -> dict[str, str]:
    return {
        "state.yaml": component("statestore", "state.sqlite", {"connectionString": ref}, secret_store=store)
    }


@pytest.mark.parametrize(
    ("resources", "problem"),
    [
        (
            {**_files({"db": "x.db"}), **_state(SecretRef("redis", "password"))},
            "state.yaml: component 'statestore': metadata field 'connectionString': "
            "secret 'redis' not found in secret store 'files'",
        ),
        (
            {**_files({"db": {"path": "x.db"}}, multi=True), **_state(SecretRef("db", "file"))},
            "metadata field 'connectionString': secret 'db' key 'file' not found in secret store 'files'",
        ),
        (
            {**_files({"db": "x.db"}), **_state(SecretRef("db"), store="ghost")},
            "metadata field 'connectionString': secret store 'ghost' (auth.secretStore) is not defined",
        ),
        (
            {
                "other.yaml": component("other", "state.in-memory"),
                **_state(SecretRef("db"), store="other"),
            },
            "auth.secretStore 'other' is a state component, not a secret store",
        ),
        (
            {
                "env.yaml": component("env", "secretstores.local.env"),
                **_state(SecretRef("PILLION_T_UNSET"), "env"),
            },
            "secret 'PILLION_T_UNSET' key 'PILLION_T_UNSET' is empty in secret store 'env'",
        ),
        (
            {"state.yaml": component("statestore", "state.sqlite", {"connectionString": SecretRef("db")})},
            "metadata field 'connectionString': secretKeyRef needs auth.secretStore",
        ),
        (
            {
                "x.yaml": component("x", "secretstores.local.file", {"secretsFile": SecretRef("f")}, "y"),
                "y.yaml": component("y", "secretstores.local.file", {"secretsFile": SecretRef("f")}, "x"),
            },
            "component 'x': secret stores read their secrets in a circle: x -> y -> x",
        ),
        (
            {
                "bad.yaml": component(
                    "bad", "secretstores.local.file", {"secretsFile": "missing.json"}
                ).replace("spec:\n", "spec:\n  ignoreErrors: true\n"),
                **_state(SecretRef("db"), store="bad"),
            },
            "metadata field 'connectionString': secret store 'bad' did not start (it has ignoreErrors: true)",
        ),
    ],
)
def test_a_broken_reference_stops_start_up_with_one_line(
    tmp_path: Path, resources: dict[str, str], problem: str
) -> None:
    line = error_line(sidecar_to_exit(tmp_path, resources))
    assert problem in line


def test_value_and_secret_key_ref_together_is_an_error(tmp_path: Path) -> None:
    doc = yaml.safe_load(component("statestore", "state.in-memory", {"x": SecretRef("s")}, "files"))
    doc["spec"]["metadata"][0]["value"] = "inline"
    line = error_line(sidecar_to_exit(tmp_path, {**_files({"s": "v"}), "state.yaml": yaml.safe_dump(doc)}))
    assert "component 'statestore': metadata field 'x': give value or secretKeyRef, not both" in line


# --- redaction -------------------------------------------------------------------------------------

SECRET_PATH_TOKEN = "redact-me-path-7f3a"
SECRET_PASSWORD = "hunter2-redact-me-91c"
LEAKY_PATH = "/nonexistent/redact-me-leak-5d2e.json"


def test_secret_values_stay_out_of_logs_and_metadata(tmp_path: Path) -> None:
    db = tmp_path / f"{SECRET_PATH_TOKEN}.db"
    secrets = {"db": str(db), "password": SECRET_PASSWORD, "leaky": LEAKY_PATH}
    resources = {
        **_files(secrets),
        "state.yaml": component(
            "statestore",
            "state.sqlite",
            {"connectionString": SecretRef("db"), "password": SecretRef("password")},
            secret_store="files",
        ),
        # Its init error names the file it could not read, which came from a secret.
        "leaky.yaml": component(
            "leaky", "secretstores.local.file", {"secretsFile": SecretRef("leaky")}, secret_store="files"
        ).replace("spec:\n", "spec:\n  ignoreErrors: true\n"),
    }
    sidecar = start_sidecar(tmp_path, resources=resources, extra_args=["--log-level", "debug"])
    try:
        with sidecar.client() as client:
            metadata = client.get("/v1.0/metadata").text
            assert client.post("/v1.0/state/statestore", json=[{"key": "k", "value": 1}]).status_code == 204
            assert client.get("/v1.0/secrets/files/nope").status_code == 500
    finally:
        sidecar.stop()
    log = sidecar.log()
    assert "component 'leaky': init failed: cannot read secrets file ***" in log
    for value in secrets.values():
        assert value not in log
        assert value not in metadata
    assert SECRET_PATH_TOKEN not in metadata and SECRET_PATH_TOKEN not in log


def test_an_invalid_value_from_a_secret_is_not_shown(tmp_path: Path) -> None:
    resources = {
        **_files({"db": "x.db", "timeout": SECRET_PASSWORD}),
        "state.yaml": component(
            "statestore",
            "state.sqlite",
            {"connectionString": SecretRef("db"), "timeout": SecretRef("timeout")},
            secret_store="files",
        ),
    }
    result = sidecar_to_exit(tmp_path, resources)
    line = error_line(result)
    assert "metadata field 'timeout': value (hidden) is invalid: not a valid duration" in line
    assert SECRET_PASSWORD not in result.stderr + result.stdout


def test_an_init_error_that_echoes_a_secret_is_redacted(tmp_path: Path) -> None:
    resources = {
        **_files({"leaky": LEAKY_PATH}),
        "leaky.yaml": component(
            "leaky", "secretstores.local.file", {"secretsFile": SecretRef("leaky")}, secret_store="files"
        ),
    }
    result = sidecar_to_exit(tmp_path, resources)
    line = error_line(result)
    assert "component 'leaky': init failed: cannot read secrets file ***" in line
    assert LEAKY_PATH not in result.stderr + result.stdout

"""The secrets API through a real sidecar: local.file and local.env stores, scoping, and the
Configuration API switches (docs/secrets.md, docs/openapi.yaml)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.secrets_support import component, error_line, sidecar_to_exit, write_config
from tests.support import SidecarProcess, start_sidecar

SECRETS = {
    "plain": "v1",
    "db": {"password": "pw", "hosts": ["h0", "h1"]},
    "num": 5,
    "ratio": 0.5,
    "flag": True,
    "nothing": None,
    "bulk": "reserved name",
    "a/b": "slash",
    "sp ace": "space",
}
MULTI = {"redis": {"password": "rp", "tls": {"cert": "c"}}, "single": "s"}
ENV = {
    "MYAPP_TOKEN": "tok",
    "DAPR_TEST_SECRET": "refused",
    "dapr_test_lower": "refused",
    "PILLION_TEST_SECRET": "refused",
    "APP_API_TOKEN": "refused",
}


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    workdir = tmp_path_factory.mktemp("secrets-api")
    (workdir / "cwd-secrets.json").write_text(json.dumps({"from-cwd": "yes"}))
    config = write_config(
        workdir,
        {
            "secrets": {
                "scopes": [
                    {"storeName": "multi", "deniedSecrets": ["single"]},
                    {
                        "storeName": "scoped",
                        "defaultAccess": "Deny",
                        "allowedSecrets": ["plain"],
                        "deniedSecrets": ["plain"],
                    },
                    {"storeName": "locked", "defaultAccess": "deny"},
                ]
            }
        },
    )
    resources = {
        "secrets.json": json.dumps(SECRETS),
        "multi.json": json.dumps(MULTI),
        "files.yaml": component("files", "secretstores.local.file", {"secretsFile": "secrets.json"}),
        "multi.yaml": component(
            "multi",
            "secretstores.local.file",
            {"secretsFile": "multi.json", "multiValued": "true", "nestedSeparator": "."},
        ),
        "scoped.yaml": component("scoped", "secretstores.local.file", {"secretsFile": "secrets.json"}),
        "locked.yaml": component("locked", "secretstores.local.file", {"secretsFile": "secrets.json"}),
        "cwd.yaml": component("cwdfile", "secretstores.local.file", {"secretsFile": "cwd-secrets.json"}),
        "env.yaml": component("env", "secretstores.local.env"),
        "prefixed.yaml": component("prefixed", "secretstores.local.env", {"prefix": "MYAPP_"}),
    }
    process = start_sidecar(workdir, resources=resources, extra_args=["--config", str(config)], env=ENV)
    yield process
    process.stop()


@pytest.fixture
def client(sidecar: SidecarProcess) -> Iterator[httpx.Client]:
    with sidecar.client() as c:
        yield c


def test_local_file_single_values_flatten_nested_names(client: httpx.Client) -> None:
    expected = {
        "plain": "v1",
        "db:password": "pw",
        "db:hosts:0": "h0",
        "db:hosts:1": "h1",
        "num": "5",
        "ratio": "0.5",
        "flag": "true",
        "nothing": "",
        "a/b": "slash",
        "sp ace": "space",
    }
    for name, value in expected.items():
        response = client.get(f"/v1.0/secrets/files/{name.replace('/', '%2F').replace(' ', '+')}")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.text == json.dumps({name: value}, separators=(",", ":")) + "\n"


def test_metadata_query_values_are_accepted(client: httpx.Client) -> None:
    response = client.get("/v1.0/secrets/files/plain", params={"metadata.version_id": "1"})
    assert response.json() == {"plain": "v1"}


def test_bulk_returns_every_secret_as_a_map(client: httpx.Client) -> None:
    response = client.get("/v1.0/secrets/files/bulk")
    assert response.status_code == 200
    body = response.json()
    assert body["plain"] == {"plain": "v1"}
    assert body["db:hosts:1"] == {"db:hosts:1": "h1"}
    assert body["bulk"] == {"bulk": "reserved name"}
    assert len(body) == 11


def test_missing_secret_is_err_secret_get(client: httpx.Client) -> None:
    response = client.get("/v1.0/secrets/files/nope")
    assert response.status_code == 500
    assert response.json() == {
        "errorCode": "ERR_SECRET_GET",
        "message": "failed getting secret with key nope from secret store files: secret nope not found",
    }


def test_unknown_store_is_401(client: httpx.Client) -> None:
    for path in ("/v1.0/secrets/nostore/plain", "/v1.0/secrets/nostore/bulk"):
        response = client.get(path)
        assert response.status_code == 401
        assert response.json() == {
            "errorCode": "ERR_SECRET_STORE_NOT_FOUND",
            "message": "failed finding secret store with key nostore",
        }


def test_multi_valued_secrets_keep_their_keys(client: httpx.Client, sidecar: SidecarProcess) -> None:
    assert client.get("/v1.0/secrets/multi/redis").json() == {"password": "rp", "tls.cert": "c"}
    components = {c["name"]: c for c in client.get("/v1.0/metadata").json()["components"]}
    assert components["multi"]["capabilities"] == ["MULTIPLE_KEY_VALUES_PER_SECRET"]
    assert "capabilities" not in components["files"]
    assert components["env"]["type"] == "secretstores.local.env"


def test_relative_files_are_found_beside_the_component_then_in_the_working_dir(client: httpx.Client) -> None:
    assert client.get("/v1.0/secrets/files/plain").json() == {"plain": "v1"}
    assert client.get("/v1.0/secrets/cwdfile/from-cwd").json() == {"from-cwd": "yes"}


def test_denied_secret_is_403_and_left_out_of_bulk(client: httpx.Client) -> None:
    response = client.get("/v1.0/secrets/multi/single")
    assert response.status_code == 403
    assert response.json() == {
        "errorCode": "ERR_PERMISSION_DENIED",
        "message": 'access denied by policy to get "single" from "multi"',
    }
    assert client.get("/v1.0/secrets/multi/bulk").json() == {"redis": {"password": "rp", "tls.cert": "c"}}


def test_allowed_list_wins_over_denied_and_default_access(client: httpx.Client) -> None:
    assert client.get("/v1.0/secrets/scoped/plain").json() == {"plain": "v1"}
    assert client.get("/v1.0/secrets/scoped/num").status_code == 403
    # A denied name that does not exist is still 403: the policy is checked first.
    assert client.get("/v1.0/secrets/scoped/nope").status_code == 403
    assert client.get("/v1.0/secrets/scoped/bulk").json() == {"plain": {"plain": "v1"}}


def test_default_access_deny_hides_everything(client: httpx.Client) -> None:
    assert client.get("/v1.0/secrets/locked/plain").status_code == 403
    bulk = client.get("/v1.0/secrets/locked/bulk")
    assert bulk.status_code == 200
    assert bulk.json() == {}


def test_local_env_reads_variables_and_refuses_the_sidecars_own(client: httpx.Client) -> None:
    assert client.get("/v1.0/secrets/env/MYAPP_TOKEN").json() == {"MYAPP_TOKEN": "tok"}
    # An unset variable is 200 with an empty value, as in daprd.
    assert client.get("/v1.0/secrets/env/NOT_SET_ANYWHERE_X").json() == {"NOT_SET_ANYWHERE_X": ""}
    for refused in ("DAPR_TEST_SECRET", "dapr_test_lower", "PILLION_TEST_SECRET", "APP_API_TOKEN"):
        response = client.get(f"/v1.0/secrets/env/{refused}")
        assert response.status_code == 200
        assert response.json() == {refused: ""}
    bulk = client.get("/v1.0/secrets/env/bulk").json()
    assert bulk["MYAPP_TOKEN"] == {"MYAPP_TOKEN": "tok"}
    assert not [name for name in bulk if name.upper().startswith(("DAPR_", "PILLION_"))]
    assert "APP_API_TOKEN" not in bulk


def test_local_env_prefix_is_added_on_get_and_taken_off_in_bulk(client: httpx.Client) -> None:
    assert client.get("/v1.0/secrets/prefixed/TOKEN").json() == {"TOKEN": "tok"}
    assert client.get("/v1.0/secrets/prefixed/bulk").json() == {"TOKEN": {"TOKEN": "tok"}}


def test_no_secret_store_at_all_is_500(tmp_path: Path) -> None:
    sidecar = start_sidecar(tmp_path)
    try:
        response = httpx.get(sidecar.url + "/v1.0/secrets/any/name")
        assert response.status_code == 500
        assert response.json() == {
            "errorCode": "ERR_SECRET_STORES_NOT_CONFIGURED",
            "message": "secret store is not configured",
        }
    finally:
        sidecar.stop()


# --- spec.api allowed / denied ----------------------------------------------------------------


def _state_and_secrets(workdir: Path) -> dict[str, str]:
    return {
        "s.json": json.dumps({"k": "v"}),
        "secrets.yaml": component("files", "secretstores.local.file", {"secretsFile": "s.json"}),
        "state.yaml": component("statestore", "state.in-memory"),
    }


def test_an_allow_list_switches_every_other_api_off(tmp_path: Path) -> None:
    http = "http"
    config = write_config(
        tmp_path,
        {
            "api": {
                "allowed": [
                    {"name": "state", "version": "v1", "protocol": http},
                    {"name": "metadata", "version": "v1.0", "protocol": "HTTP"},  # daprd's path form
                    {"name": "invoke", "version": "v1", "protocol": http},
                    {"name": "secrets", "version": "v1", "protocol": "grpc"},  # not for HTTP
                    {"name": "shutdown", "version": "v1"},  # no protocol: applies to nothing
                ]
            }
        },
    )
    sidecar = start_sidecar(
        tmp_path, resources=_state_and_secrets(tmp_path), extra_args=["--config", str(config)]
    )
    try:
        with sidecar.client() as client:
            response = client.get("/v1.0/secrets/files/k")
            assert response.status_code == 404
            assert response.json()["errorCode"] == "ERR_DIRECT_INVOKE"
            assert client.get("/v1.0/secrets/files/k", headers={"dapr-app-id": "x"}).status_code == 500
            assert client.post("/v1.0/state/statestore", json=[{"key": "a", "value": 1}]).status_code == 204
            assert client.get("/v1.0/state/statestore/a").json() == 1
            # The query API is group state/v1alpha1, which the list does not name.
            query = client.post("/v1.0-alpha1/state/statestore/query", json={"filter": {}})
            assert query.json()["errorCode"] == "ERR_DIRECT_INVOKE"
            assert client.get("/v1.0/metadata").status_code == 200
            assert client.get("/v1.0/healthz").status_code == 204
        assert "applies to neither HTTP nor gRPC" in sidecar.log()
    finally:
        sidecar.stop()


def test_denying_invoke_removes_the_fallback_too(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {
            "api": {
                "denied": [
                    {"name": "invoke", "version": "v1", "protocol": "http"},
                    {"name": "secrets", "version": "v1.0", "protocol": "http"},
                ]
            }
        },
    )
    sidecar = start_sidecar(
        tmp_path, resources=_state_and_secrets(tmp_path), extra_args=["--config", str(config)]
    )
    try:
        with sidecar.client() as client:
            response = client.get("/v1.0/secrets/files/k")
            assert response.status_code == 404
            assert response.text == "404 page not found\n"
            assert client.put("/v1.0/state/statestore/a").status_code == 405
            assert client.post("/v1.0/state/statestore", json=[{"key": "a", "value": 1}]).status_code == 204
    finally:
        sidecar.stop()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: c}\n"
            "spec: {secrets: {scopes: [{storeName: s, defaultAccess: denny}]}}\n",
            "configuration 'c': spec.secrets.scopes[0].defaultAccess: 'denny' is not allow or deny",
        ),
        (
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: c}\n"
            "spec: {secrets: {scopes: [{storeName: s, allowedSecrets: a}]}}\n",
            "spec.secrets.scopes[0].allowedSecrets: must be a list of strings",
        ),
        (
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: c}\n"
            "spec: {api: {allowed: [{version: v1, protocol: http}]}}\n",
            "spec.api.allowed[0].name: must be a non-empty string",
        ),
        (
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: c}\n",
            "no document of kind Configuration",
        ),
        ("kind: Configuration\nspec: [\n", "invalid YAML"),
    ],
)
def test_bad_configuration_stops_start_up_with_one_line(tmp_path: Path, text: str, problem: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(text)
    line = error_line(sidecar_to_exit(tmp_path, {}, ["--config", str(config)]))
    assert str(config) in line and problem in line


def test_missing_configuration_file_is_one_line(tmp_path: Path) -> None:
    line = error_line(sidecar_to_exit(tmp_path, {}, ["--config", str(tmp_path / "nope.yaml")]))
    assert "nope.yaml: cannot read configuration file" in line


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ({}, "cannot read secrets file"),
        ({"s.json": "{not json"}, "is not valid JSON"),
        ({"s.json": "[1, 2]"}, "must hold a JSON object"),
        ({"s.json": json.dumps({"a:b": "1", "a": {"b": "2"}})}, "the name 'a:b' occurs twice"),
    ],
)
def test_unusable_secrets_file_stops_start_up(tmp_path: Path, files: dict[str, str], problem: str) -> None:
    resources = {**files, "s.yaml": component("files", "secretstores.local.file", {"secretsFile": "s.json"})}
    line = error_line(sidecar_to_exit(tmp_path, resources))
    assert "s.yaml: component 'files': init failed: " in line and problem in line
    assert str(tmp_path / "resources" / "s.json") in line

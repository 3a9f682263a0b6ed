"""Components of building blocks Pillion lacks do not stop start-up (issue 16, part 2)."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.state_support import component
from tests.support import free_port, run_sidecar_to_exit, start_sidecar, write_resources

FOREIGN = {
    "workflow.yaml": component("wf", "workflow.dapr", {}),
    "middleware.yaml": component("ratelimit", "middleware.http.ratelimit", {"maxRequestsPerSecond": "10"}),
    "conversation.yaml": component("llm", "conversation.openai", {"key": "not-a-secret"}),
    "crypto.yaml": component("keys", "crypto.dapr.localstorage", {"path": "/nowhere"}),
}


def test_foreign_blocks_are_listed_as_not_loaded_and_answer_not_found(tmp_path: Path) -> None:
    resources = {"state.yaml": component("statestore", "state.in-memory", {}), **FOREIGN}
    sidecar = start_sidecar(tmp_path, resources=resources)
    try:
        with sidecar.client() as client:
            body = client.get("/v1.0/metadata").json()
            assert [c["name"] for c in body["components"]] == ["statestore"]
            aside = {c["name"]: c for c in body["componentsNotLoaded"]}
            assert set(aside) == {"wf", "ratelimit", "llm", "keys"}
            assert aside["wf"] == {
                "name": "wf",
                "type": "workflow.dapr",
                "version": "v1",
                "reason": "Pillion has no workflow building block",
            }
            converse = client.post("/v1.0-alpha1/conversation/llm/converse", json={"inputs": []})
            assert converse.status_code == 400
            assert converse.json() == {
                "errorCode": "ERR_CONVERSATION_NOT_FOUND",
                "message": "failed finding conversation component llm",
            }
            encrypt = client.put("/v1.0-alpha1/crypto/keys/encrypt", content=b"x")
            assert encrypt.status_code == 400
            assert encrypt.json()["errorCode"] == "ERR_CRYPTO_PROVIDER_NOT_FOUND"
            other = client.put("/v1.0-alpha1/crypto/other/encrypt", content=b"x")
            assert other.status_code == 500
            assert other.json()["errorCode"] == "ERR_CRYPTO_PROVIDERS_NOT_CONFIGURED"
            # The blocks Pillion has still work.
            assert client.post("/v1.0/state/statestore", json=[{"key": "k", "value": 1}]).status_code == 204
        log = sidecar.log()
        for name, ctype in (("wf", "workflow.dapr"), ("ratelimit", "middleware.http.ratelimit")):
            warnings = [line for line in log.splitlines() if f"'{name}'" in line and "not loaded" in line]
            assert len(warnings) == 1 and ctype in warnings[0], log
        assert "not-a-secret" not in log
    finally:
        sidecar.stop()


def test_a_typo_in_a_block_pillion_has_still_stops_start_up(tmp_path: Path) -> None:
    folder = write_resources(
        tmp_path / "res", {**FOREIGN, "bad.yaml": component("statestore", "state.redsi", {})}
    )
    result = run_sidecar_to_exit(
        tmp_path, ["--app-id", "a", "--resources-path", str(folder), "--dapr-http-port", str(free_port())]
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("pillion:")]
    assert len(lines) == 1 and "unknown spec.type 'state.redsi'" in lines[0], result.stderr


def test_metadata_has_no_not_loaded_key_without_such_components(tmp_path: Path) -> None:
    sidecar = start_sidecar(tmp_path, resources={"s.yaml": component("statestore", "state.in-memory", {})})
    try:
        assert "componentsNotLoaded" not in httpx.get(sidecar.url + "/v1.0/metadata").json()
    finally:
        sidecar.stop()

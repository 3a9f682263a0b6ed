"""Only HTTP requests reach the API, and no log line gives a token or a secret away (issue 13,
item 3)."""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from pathlib import Path

import pytest
from starlette.types import Message

from runtime.http.app import create_app
from runtime.lifecycle.sidecar import Sidecar, SidecarOptions
from tests.pubsub_support import SubscriberApp, running, subscription
from tests.secrets_support import SecretRef, component

API_TOKEN = "api-T0KEN-4d1f9e"
APP_TOKEN = "app-T0KEN-93b2c7"
FETCHED = "fetched-S3CRET-5e0a"
REFERENCED = "referenced-S3CRET-7c4d"

UPGRADE = (
    "GET /v1.0/metadata HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n{token}\r\n"
)


def _upgrade(port: int, token: str | None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    header = f"dapr-api-token: {token}\r\n" if token else ""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(UPGRADE.format(key=key, token=header).encode())
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := conn.recv(4096)):
            answer += chunk
    return answer


def _hang_up_mid_body(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(
            f"POST /v1.0/state/statestore HTTP/1.1\r\nHost: x\r\ndapr-api-token: {API_TOKEN}\r\n"
            "Content-Length: 100\r\n\r\n[{{".encode()
        )
        time.sleep(0.3)


def test_websocket_upgrades_are_plain_http_requests_and_tokens_and_secrets_stay_out_of_the_log(
    tmp_path: Path,
) -> None:
    secrets = {"fetched": FETCHED, "db": str(tmp_path / f"{REFERENCED}.db")}
    resources = {
        "secrets.json": json.dumps(secrets),
        "files.yaml": component("files", "secretstores.local.file", {"secretsFile": "secrets.json"}),
        "state.yaml": component(
            "statestore", "state.sqlite", {"connectionString": SecretRef("db")}, secret_store="files"
        ),
        "pubsub.yaml": component("pubsub", "pubsub.sqlite", {"connectionString": str(tmp_path / "ps.db")}),
    }
    app = SubscriberApp([subscription("orders", "/orders")]).start()
    env = {"DAPR_API_TOKEN": API_TOKEN, "APP_API_TOKEN": APP_TOKEN}
    try:
        with running(tmp_path, app, resources, env=env, extra_args=["--log-level", "debug"]) as sidecar:
            # A WebSocket upgrade is an HTTP request like any other: without the token it is
            # refused, with it the route answers over HTTP; nothing switches protocols.
            assert _upgrade(sidecar.port, None).startswith(b"HTTP/1.1 401 ")
            with_token = _upgrade(sidecar.port, API_TOKEN)
            assert with_token.startswith(b"HTTP/1.1 200 "), with_token
            assert b"101 Switching" not in with_token
            with sidecar.client(headers={"dapr-api-token": API_TOKEN}) as api:
                assert api.post("/v1.0/state/statestore", json=[{"key": "k", "value": 1}]).status_code == 204
                assert api.get("/v1.0/secrets/files/fetched").json() == {"fetched": FETCHED}
                assert api.get("/v1.0/secrets/files/bulk").status_code == 200
                assert api.post("/v1.0/publish/pubsub/orders", json={"n": 1}).status_code == 204
                assert api.get("/v1.0/metadata", headers={"dapr-api-token": "wrong"}).status_code == 401
            _hang_up_mid_body(sidecar.port)
            delivered = app.wait_for(1, "/orders")
            assert delivered[0].headers["dapr-api-token"] == APP_TOKEN
    finally:
        app.stop()
    log = sidecar.log()  # once stopped, with every line written
    assert "DEBUG   pillion.http: client left during POST /v1.0/state/statestore" in log, log
    for name, value in [
        ("API token", API_TOKEN),
        ("app token", APP_TOKEN),
        ("secret", FETCHED),
        ("secret", REFERENCED),
    ]:
        leaks = [line for line in log.splitlines() if value in line]
        assert leaks == [], f"the {name} is in the log: {leaks[:3]}"
    assert "Traceback" not in log


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["websocket", "webtransport", "made-up"])
async def test_connections_other_than_http_never_reach_a_route(kind: str) -> None:
    """Even with the right token, whatever the server hands over that is not HTTP is refused
    before the token check, the routes or the fallback see it."""
    app = create_app(Sidecar(SidecarOptions(app_id="scopes", api_token=API_TOKEN)))
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": f"{kind}.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [(b"dapr-api-token", API_TOKEN.encode()), (b"host", b"x")]
    scope = {"type": kind, "path": "/v1.0/metadata", "raw_path": b"/v1.0/metadata", "query_string": b""}
    await app({**scope, "headers": headers}, receive, send)
    assert sent == ([{"type": "websocket.close", "code": 1008}] if kind == "websocket" else [])

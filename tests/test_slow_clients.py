"""Half-sent requests must not hold connections for ever (issue 13, item 2).

Real sidecars, real sockets: clients that stop half-way through their headers or body are cut
off at the deadlines, and when slow clients fill the connection cap (under a low open-file limit)
new clients are turned away with 503 while the health probes keep answering.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import SidecarProcess, start_sidecar

TOKEN = "slow-clients-token"


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    running = start_sidecar(
        tmp_path_factory.mktemp("deadlines"),
        extra_args=["--http-read-header-timeout", "1s", "--http-read-body-timeout", "1s"],
    )
    yield running
    running.stop()


def _closed_after(conn: socket.socket, within: float) -> tuple[float, bytes]:
    """Seconds until the server closed ``conn``, and what it said before."""
    started = time.monotonic()
    conn.settimeout(within)
    said = b""
    try:
        while chunk := conn.recv(4096):
            said += chunk
    except TimeoutError:
        raise AssertionError(f"the connection was still open after {within}s") from None
    return time.monotonic() - started, said


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /v1.0/metadata HTTP/1.1\r\n", b"GET /v1.0/metadata HTTP/1.1\r\nHost: x\r\n"],
    ids=["nothing", "request-line", "some-headers"],
)
def test_headers_that_never_end_are_cut_off_at_the_deadline(sidecar: SidecarProcess, sent: bytes) -> None:
    with socket.create_connection(("127.0.0.1", sidecar.port)) as conn:
        conn.sendall(sent)
        took, said = _closed_after(conn, 5)
    assert 0.8 < took < 3
    assert said == (b"" if not sent else said)
    if sent:
        assert said.startswith(b"HTTP/1.1 408 ")


def test_a_body_that_never_ends_is_cut_off_at_the_deadline(sidecar: SidecarProcess) -> None:
    with socket.create_connection(("127.0.0.1", sidecar.port)) as conn:
        conn.sendall(
            b"POST /v1.0/state/statestore HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n[{"key":'
        )
        took, said = _closed_after(conn, 5)
    assert 0.8 < took < 3
    assert said.startswith(b"HTTP/1.1 408 ")
    assert httpx.get(f"{sidecar.url}/v1.0/healthz").status_code == 204
    assert "Traceback" not in sidecar.log()


def test_a_kept_alive_connection_gets_the_deadline_for_each_request(sidecar: SidecarProcess) -> None:
    with socket.create_connection(("127.0.0.1", sidecar.port)) as conn:
        conn.sendall(b"GET /v1.0/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        assert conn.recv(4096).startswith(b"HTTP/1.1 204 ")
        conn.sendall(b"GET /v1.0/healthz HTTP/1.1\r\n")
        took, said = _closed_after(conn, 5)
    assert took < 3 and said.startswith(b"HTTP/1.1 408 ")


def test_slow_clients_under_a_low_file_limit_cannot_lock_out_health_probes(tmp_path: Path) -> None:
    """1,100 clients that stop after one header line, against a sidecar limited to 1,024 open
    files: the cap (1,024 - 512) turns new clients away with 503, health probes still answer,
    and once the slow clients are cut off everything works again."""
    sidecar = start_sidecar(
        tmp_path,
        env={"DAPR_API_TOKEN": TOKEN},
        extra_args=["--http-read-header-timeout", "4s"],
        open_files=1024,
    )
    slow: list[socket.socket] = []
    try:
        for _ in range(1100):
            try:
                conn = socket.create_connection(("127.0.0.1", sidecar.port), timeout=5)
                conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            except OSError:
                continue  # turned away at once: fine, it holds nothing
            slow.append(conn)
        with httpx.Client(base_url=sidecar.url, timeout=5) as fresh:
            assert fresh.get("/v1.0/healthz").status_code == 204
            assert fresh.get("/v1.0/healthz/outbound").status_code == 204
            refused = fresh.get("/v1.0/metadata", headers={"dapr-api-token": TOKEN})
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "1"
        time.sleep(5)  # the slow clients miss their deadline
        with httpx.Client(base_url=sidecar.url, timeout=5) as fresh:
            answered = fresh.get("/v1.0/metadata", headers={"dapr-api-token": TOKEN})
            assert answered.status_code == 200
    finally:
        for conn in slow:
            conn.close()
        sidecar.stop()
    log = sidecar.log()
    assert log.count("connection cap reached: ") == 1, log
    assert "--http-max-connections 512" in log
    assert "connections below the cap again" in log
    assert "Traceback" not in log

"""Access control, Resiliency policies, certificate rotation and Redis name resolution, each
through real sidecars."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.invoke_support import InvokeApp, start_app, start_invoke_sidecar
from tests.support import SidecarProcess

ACL = """
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata: {name: acl}
spec:
  accessControl:
    defaultAction: deny
    trustDomain: public
    policies:
    - appId: acl-caller
      defaultAction: deny
      trustDomain: public
      namespace: default
      operations:
      - name: /echo/allowed/**
        httpVerb: [GET]
        action: allow
"""

RESILIENCY = """
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: invoke-policies}
spec:
  policies:
    timeouts: {quick: 500ms}
    retries:
      three: {policy: constant, duration: 100ms, maxRetries: 3}
      only503: {policy: constant, duration: 50ms, maxRetries: 3, matching: {httpStatusCodes: "503"}}
    circuitBreakers:
      cb: {maxRequests: 1, timeout: 2s, trip: consecutiveFailures >= 2}
  targets:
    apps:
      res-flaky: {retry: three}
      res-picky: {retry: only503}
      res-slow: {timeout: quick}
      res-broken: {circuitBreaker: cb}
"""


@pytest.fixture(scope="module")
def app() -> Iterator[InvokeApp]:
    started = start_app("policies")
    yield started
    started.stop()


def _stop(*sidecars: SidecarProcess) -> None:
    for sidecar in sidecars:
        sidecar.stop()


def _calls(app: InvokeApp, key: str) -> int:
    count: int = httpx.get(f"http://127.0.0.1:{app.port}/count/{key}").json()["calls"]
    return count


def test_access_control_decides_from_the_callers_certificate(app: InvokeApp, tmp_path: Path) -> None:
    config = tmp_path / "acl.yaml"
    config.write_text(ACL)
    target = start_invoke_sidecar(tmp_path, "acl-target", app, ["--config", str(config)])
    caller = start_invoke_sidecar(tmp_path, "acl-caller")
    other = start_invoke_sidecar(tmp_path, "acl-other")
    try:
        with caller.client() as client:
            allowed = client.get("/v1.0/invoke/acl-target/method/echo/allowed/x/y")
            wrong_verb = client.post("/v1.0/invoke/acl-target/method/echo/allowed/x")
            wrong_path = client.get("/v1.0/invoke/acl-target/method/echo/other")
            # The header claims another identity: only the certificate counts.
            forged = client.get(
                "/v1.0/invoke/acl-target/method/echo/other", headers={"dapr-caller-app-id": "acl-caller"}
            )
        with other.client() as client:
            stranger = client.get("/v1.0/invoke/acl-target/method/echo/allowed/x")
    finally:
        _stop(caller, other, target)
    assert allowed.status_code == 200
    for denied in (wrong_verb, wrong_path, forged, stranger):
        assert denied.status_code == 403, denied.text
        assert denied.json()["errorCode"] == "ERR_DIRECT_INVOKE"
    assert wrong_path.json()["message"] == (
        "failed to invoke, id: acl-target, err: rpc error: code = PermissionDenied desc = access "
        "control policy has denied access to id: spiffe://public/ns/default/acl-caller "
        "operation: echo/other verb: GET"
    )
    assert "spiffe://public/ns/default/acl-other" in stranger.json()["message"]


def test_a_bad_access_control_policy_stops_start_up(tmp_path: Path) -> None:
    from tests.support import run_sidecar_to_exit

    config = tmp_path / "bad.yaml"
    config.write_text(ACL.replace("      namespace: default\n", ""))
    result = run_sidecar_to_exit(
        tmp_path,
        ["--app-id", "acl-bad", "--dapr-http-port", "0", "--metrics-port", "0", "--config", str(config)],
        timeout=60,
    )
    assert result.returncode == 1
    assert "spec.accessControl.policies[0].namespace: is required" in result.stderr


@pytest.fixture(scope="module")
def resilient(app: InvokeApp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    workdir = tmp_path_factory.mktemp("resiliency")
    targets = [
        start_invoke_sidecar(workdir, name, app)
        for name in ("res-flaky", "res-picky", "res-slow", "res-broken")
    ]
    caller = start_invoke_sidecar(workdir, "res-caller", resources={"resiliency.yaml": RESILIENCY})
    yield caller
    _stop(caller, *targets)


def test_retries_until_the_app_answers(resilient: SidecarProcess, app: InvokeApp) -> None:
    with resilient.client() as client:
        response = client.post("/v1.0/invoke/res-flaky/method/flaky/k1/2", content=b"replayed")
    assert response.status_code == 200
    assert response.text == "ok after 3"
    assert _calls(app, "k1") == 3


def test_retries_give_up_with_the_apps_last_answer(resilient: SidecarProcess, app: InvokeApp) -> None:
    with resilient.client() as client:
        response = client.get("/v1.0/invoke/res-flaky/method/flaky/k2/10")
    assert response.status_code == 500
    assert response.text == "not yet"
    assert _calls(app, "k2") == 4  # one try and three retries


def test_matching_limits_which_statuses_are_retried(resilient: SidecarProcess, app: InvokeApp) -> None:
    with resilient.client() as client:
        response = client.get("/v1.0/invoke/res-picky/method/flaky/k3/2")
    assert response.status_code == 500
    assert _calls(app, "k3") == 1  # 500 is not in httpStatusCodes "503"


def test_a_timeout_cuts_a_slow_call(resilient: SidecarProcess) -> None:
    started = time.monotonic()
    with resilient.client() as client:
        response = client.get("/v1.0/invoke/res-slow/method/slow/3")
    assert time.monotonic() - started < 2
    assert response.status_code == 500
    assert response.json() == {
        "errorCode": "ERR_DIRECT_INVOKE",
        "message": "failed to invoke, id: res-slow, err: context deadline exceeded",
    }


def test_a_circuit_breaker_opens_and_closes(resilient: SidecarProcess, app: InvokeApp) -> None:
    with resilient.client() as client:
        first = [client.get("/v1.0/invoke/res-broken/method/fail").status_code for _ in range(2)]
        seen = _calls(app, "fail")
        opened = client.get("/v1.0/invoke/res-broken/method/fail")
        assert _calls(app, "fail") == seen  # not called while open
        time.sleep(2.2)
        half_open = client.get("/v1.0/invoke/res-broken/method/echo/x")
        closed = [client.get("/v1.0/invoke/res-broken/method/echo/x").status_code for _ in range(3)]
    assert first == [500, 500]
    assert opened.status_code == 500
    assert opened.json()["message"] == "failed to invoke, id: res-broken, err: circuit breaker is open"
    assert half_open.status_code == 200
    assert closed == [200, 200, 200]


def test_certificates_rotate_under_load(app: InvokeApp, tmp_path: Path) -> None:
    target = start_invoke_sidecar(tmp_path, "rot-b", app, ["--cert-ttl", "2s"])
    caller = start_invoke_sidecar(tmp_path, "rot-a", None, ["--cert-ttl", "2s"])

    def hammer(worker: int) -> list[int]:
        statuses = []
        # A new connection now and then, so handshakes happen with the renewed certificates too.
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            with httpx.Client(base_url=caller.url, timeout=10) as client:
                for _ in range(20):
                    statuses.append(client.get(f"/v1.0/invoke/rot-b/method/echo/{worker}").status_code)
        return statuses

    try:
        with ThreadPoolExecutor(4) as pool:
            results = [s for statuses in pool.map(hammer, range(4)) for s in statuses]
        renewals = (
            target.log().count("renewed the certificate"),
            caller.log().count("renewed the certificate"),
        )
    finally:
        _stop(caller, target)
    assert len(results) > 100
    assert set(results) == {200}
    assert min(renewals) >= 3, renewals


def test_redis_name_resolution(app: InvokeApp, tmp_path: Path, redis_url: str) -> None:
    from urllib.parse import urlsplit

    address = urlsplit(redis_url)
    config = tmp_path / "nr.yaml"
    config.write_text(
        f"""
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata: {{name: nr}}
spec:
  nameResolution:
    component: redis
    configuration:
      redisHost: "{address.hostname}:{address.port}"
      keyPrefix: "test-nr-{tmp_path.name}||"
"""
    )
    target = start_invoke_sidecar(tmp_path, "nr-b", app, ["--config", str(config)])
    caller = start_invoke_sidecar(tmp_path, "nr-a", None, ["--config", str(config)])
    try:
        with caller.client() as client:
            response = client.get("/v1.0/invoke/nr-b/method/echo/redis")
        assert response.status_code == 200, response.text
        assert "nameresolution.redis" in caller.log()
    finally:
        _stop(caller, target)


def test_kubernetes_name_resolution_uses_dns_names(app: InvokeApp, tmp_path: Path) -> None:
    """The resolver looks up a name and dials every sidecar on the shared internal port; here the
    template names 127.0.0.2, where the target listens on the caller's internal port number."""
    from tests.support import free_port

    port = free_port()
    config = tmp_path / "k8s.yaml"
    config.write_text(
        """
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata: {name: k8s}
spec:
  nameResolution:
    component: kubernetes
    configuration: {template: "127.0.0.2"}
"""
    )
    shared = ["--config", str(config), "--dapr-internal-grpc-port", str(port)]
    target = start_invoke_sidecar(
        tmp_path, "k8s-b", app, [*shared, "--dapr-internal-grpc-listen-address", "127.0.0.2"]
    )
    caller = start_invoke_sidecar(tmp_path, "k8s-a", None, shared)
    try:
        with caller.client() as client:
            response = client.get("/v1.0/invoke/k8s-b/method/echo/k8s")
            # The name answers for any app id: the certificate shows it is not k8s-c's sidecar.
            wrong = client.get("/v1.0/invoke/k8s-c/method/echo/k8s")
    finally:
        _stop(caller, target)
    assert response.status_code == 200, response.text
    assert response.json()["path"] == "/echo/k8s"
    assert wrong.status_code == 500
    assert "not a sidecar of k8s-c" in wrong.json()["message"]


def test_sidecars_started_together_share_one_new_ca(tmp_path: Path) -> None:
    """Each would make the CA on first use; one must win and the others read it."""
    import subprocess
    import sys

    from tests.support import ROOT

    script = (
        "import sys; from pathlib import Path; from runtime.invocation.mtls import CertificateAuthority as C;"
        "ca = C.load_or_create(Path(sys.argv[1]));"
        "print(ca.certificate.fingerprint(__import__('cryptography.hazmat.primitives.hashes',"
        " fromlist=['SHA256']).SHA256()).hex(), ca.key.public_key() == ca.certificate.public_key())"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / "ca")], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        for _ in range(6)
    ]
    answers = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(answers) == 1, answers
    assert answers.pop().endswith(" True")

"""The deployment files agree with the sidecar they deploy.

The Dockerfile is checked as text (no Docker engine is needed). The Kubernetes and Compose files are
parsed, their flags run through Pillion's own argument parser, their ports, probes and mounts
compared with those flags, and then each is started for real: the sidecar with the manifest's exact
arguments and environment, its ConfigMap and Secret laid out as the kubelet lays them out, against a
redis-server started with the manifest's own Redis arguments. Only what a container would see
differently is changed: ports (free ones), mount paths (folders under tmp_path) and addresses.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from runtime.cli.main import build_parser, check_listen_address, options_from_args
from runtime.http.auth import EXEMPT
from runtime.resources.configuration import load_configuration
from runtime.resources.loader import load_components
from tests.support import ROOT, SidecarProcess, free_port, start_sidecar

DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
NAMESPACE = "default"

Doc = dict[str, Any]


# --- reading the files ---------------------------------------------------------------------------


def sidecar_args(argv: list[str]) -> argparse.Namespace:
    """``argv`` as ``pillion serve`` reads it; an unknown flag or a bad value fails the test."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return build_parser().parse_args(["serve", *argv])
    except SystemExit:
        pytest.fail(f"pillion serve rejects {argv}: {stderr.getvalue().strip()}")


def defaults() -> argparse.Namespace:
    return sidecar_args(["--app-id", "any"])


def k8s_objects() -> list[Doc]:
    docs: list[Doc] = []
    for file in sorted(KUBERNETES.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(file.read_text()) if d is not None)
    return docs


def k8s_object(kind: str, name: str) -> Doc:
    found = [d for d in k8s_objects() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r} in {KUBERNETES}, found {len(found)}"
    return found[0]


def secret_value(name: str, key: str) -> str:
    data: dict[str, str] = k8s_object("Secret", name).get("stringData") or {}
    assert key in data, f"Secret {name!r} has no key {key!r}"
    return data[key]


@dataclass
class Pod:
    deployment: Doc

    @property
    def spec(self) -> Doc:
        spec: Doc = self.deployment["spec"]["template"]["spec"]
        return spec

    @property
    def labels(self) -> dict[str, str]:
        labels: dict[str, str] = self.deployment["spec"]["template"]["metadata"]["labels"]
        return labels

    @property
    def sidecar(self) -> Doc:
        found: list[Doc] = [c for c in self.spec.get("initContainers", []) if c["name"] == "pillion"]
        assert len(found) == 1, "the pod needs one init container named pillion"
        return found[0]

    @property
    def app(self) -> Doc:
        app: Doc = self.spec["containers"][0]
        return app

    def volume(self, name: str) -> Doc:
        found: list[Doc] = [v for v in self.spec.get("volumes", []) if v["name"] == name]
        assert len(found) == 1, f"volume {name!r} is not declared in the pod"
        return found[0]


def the_pod() -> Pod:
    deployments = [d for d in k8s_objects() if d["kind"] == "Deployment" and d["metadata"]["name"] != "redis"]
    assert len(deployments) == 1
    return Pod(deployments[0])


def container_port(container: Doc, port: int | str) -> int:
    """A probe's or policy's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    found = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert len(found) == 1, f"no container port named {port!r} in {container['name']}"
    value: int = found[0]
    return value


def container_env(container: Doc) -> dict[str, str]:
    """The environment the kubelet would give the container."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        source = item.get("valueFrom")
        if source is None:
            env[item["name"]] = str(item["value"])
        elif "secretKeyRef" in source:
            env[item["name"]] = secret_value(source["secretKeyRef"]["name"], source["secretKeyRef"]["key"])
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[item["name"]] = NAMESPACE
        else:
            pytest.fail(f"{container['name']}: env {item['name']} has a source this test does not know")
    return env


def mounted_file(pod: Pod, container: Doc, path: str) -> tuple[Doc, str]:
    """The volume that holds ``path`` inside ``container``, and the path within that volume."""
    for mount in container.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix):
            return pod.volume(mount["name"]), path[len(prefix) :]
    pytest.fail(f"{path} is on no volume mounted in {container['name']}")


def volume_files(volume: Doc) -> dict[str, str]:
    """The files the kubelet writes for a ConfigMap or Secret volume, by path."""
    if "configMap" in volume:
        data: dict[str, str] = k8s_object("ConfigMap", volume["configMap"]["name"])["data"]
        items = volume["configMap"].get("items")
    elif "secret" in volume:
        data = k8s_object("Secret", volume["secret"]["secretName"]).get("stringData") or {}
        items = volume["secret"].get("items")
    else:
        return {}
    if items is None:
        return dict(data)
    return {item["path"]: data[item["key"]] for item in items}


def lay_out(volume: Doc, folder: Path) -> None:
    """Write a ConfigMap or Secret volume as the kubelet does: keys are symlinks through ..data."""
    stamped = folder / "..2026_01_01_00_00_00.000000001"
    stamped.mkdir(parents=True)
    for path, text in volume_files(volume).items():
        (stamped / path).write_text(text)
    (folder / "..data").symlink_to(stamped.name)
    for path in volume_files(volume):
        (folder / path).symlink_to(Path("..data") / path)


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def instructions(name: str) -> list[str]:
    return [args for instruction, args in dockerfile() if instruction == name]


_GLOB = {"**": ".*", "*": "[^/]*", "?": "[^/]"}


def dockerignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    ignored = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = "".join(
            _GLOB.get(token) or re.escape(token) for token in re.split(r"(\*\*|\*|\?)", pattern) if token
        )
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            ignored = not negated
    return ignored


def compose() -> Doc:
    doc: Doc = yaml.safe_load(COMPOSE.read_text())
    return doc


def replace_flag(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with ``flag``'s value replaced, in either spelling (``--f=v`` or ``--f v``)."""
    out: list[str] = []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == flag:
            out += [flag, value]
            skip = i + 1 < len(argv)
        elif arg.startswith(flag + "="):
            out.append(f"{flag}={value}")
        else:
            out.append(arg)
    return out


def relocate(text: str, mounts: dict[str, Path]) -> str:
    """Mount paths inside a container, rewritten to the folders that stand in for them (in one
    pass: a folder under /tmp must not be taken for a mount at /tmp)."""
    paths = sorted((m.rstrip("/") for m in mounts), key=len, reverse=True)
    folders = {m.rstrip("/"): str(folder) for m, folder in mounts.items()}
    pattern = rf"(?<![\w./-])({'|'.join(map(re.escape, paths))})(?=/|$|\s|\")"
    return re.sub(pattern, lambda match: folders[match.group(1)], text)


# --- Dockerfile ----------------------------------------------------------------------------------


def test_dockerfile_installs_the_package_and_runs_pillion_serve_as_a_non_root_user() -> None:
    assert instructions("FROM") == ["python:3.11-slim"]
    assert len(instructions("ENTRYPOINT")) == 1
    assert yaml.safe_load(instructions("ENTRYPOINT")[0]) == ["pillion", "serve"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["pillion"] == "runtime.cli.main:main"

    user = instructions("USER")[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, "USER must be a numeric non-root uid (runAsNonRoot)"
    pod = the_pod()
    assert pod.sidecar["securityContext"]["runAsUser"] == int(user)
    assert pod.spec["securityContext"]["fsGroup"] == int(user), "the Secret must be readable by the user"

    # Everything pip needs to build the package is copied: pyproject, its readme, every package.
    copied = {Path(src).name for args in instructions("COPY") for src in args.split()[:-1]}
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    wanted = {"pyproject.toml", project["readme"]} | {p.rstrip("*") for p in packages["include"]}
    assert wanted <= copied
    assert any("pip install" in run for run in instructions("RUN"))

    exposed = {int(port.split("/")[0]) for args in instructions("EXPOSE") for port in args.split()}
    assert exposed == {defaults().dapr_http_port}


def test_dockerignore_sends_the_sources_and_nothing_else() -> None:
    for args in instructions("COPY"):
        for source in args.split()[:-1]:
            assert (ROOT / source).exists(), source
            assert not dockerignored(source), f"{source} is copied but .dockerignore leaves it out"
    assert not dockerignored("runtime/cli/main.py")
    assert not dockerignored("components/state/redis.py")
    for path in (".venv/bin/python", ".git/HEAD", "tests/test_deploy.py", "runtime/__pycache__/cli.pyc"):
        assert dockerignored(path), path


# --- Kubernetes ----------------------------------------------------------------------------------


def test_pillion_is_a_native_sidecar_run_by_the_images_entrypoint() -> None:
    pod = the_pod()
    assert pod.sidecar["restartPolicy"] == "Always"
    assert "command" not in pod.sidecar, "the image's ENTRYPOINT is `pillion serve`; pass flags as args"
    assert [c["name"] for c in pod.spec["containers"]] == ["app"]


def test_kubernetes_ports_probes_and_token_agree_with_the_sidecars_flags(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pod = the_pod()
    args = sidecar_args(pod.sidecar["args"])
    sidecar_ports = {p["containerPort"] for p in pod.sidecar["ports"]}
    assert sidecar_ports == {args.dapr_http_port}

    probes = {kind: pod.sidecar[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["httpGet"]["path"] == "/v1.0/healthz/outbound"
    for kind, probe in probes.items():
        assert container_port(pod.sidecar, probe["httpGet"]["port"]) == args.dapr_http_port, kind
        # The kubelet sends no token: only paths the token check exempts can be probed.
        assert probe["httpGet"]["path"] in EXEMPT, kind
        # The outbound check pings every backend for up to a second.
        assert probe.get("timeoutSeconds", 1) > 1, kind

    # The kubelet probes the pod IP: a loopback-only sidecar would never become ready.
    assert args.dapr_listen_addresses not in LOOPBACK
    sidecar_env = container_env(pod.sidecar)
    app_env = container_env(pod.app)
    assert sidecar_env.get("DAPR_API_TOKEN"), "an API on the pod IP needs a token"
    monkeypatch.setenv("DAPR_API_TOKEN", sidecar_env["DAPR_API_TOKEN"])
    check_listen_address(options_from_args(args), args.allow_remote_access)

    # The app reaches the sidecar on localhost with the same token, and takes calls on --app-port.
    assert int(app_env["DAPR_HTTP_PORT"]) == args.dapr_http_port
    assert app_env["DAPR_API_TOKEN"] == sidecar_env["DAPR_API_TOKEN"]
    assert args.app_port in {p["containerPort"] for p in pod.app["ports"]}


def test_kubernetes_mounts_carry_the_resources_the_flags_and_components_name(tmp_path: Path) -> None:
    pod = the_pod()
    args = sidecar_args(pod.sidecar["args"])
    for container in (pod.sidecar, pod.app):
        for mount in container.get("volumeMounts", []):
            pod.volume(mount["name"])

    resources = [p for item in args.resources_path for p in item.split(",") if p]
    assert resources
    for path in resources:
        volume, inside = mounted_file(pod, pod.sidecar, path.rstrip("/") + "/x")
        assert "configMap" in volume and inside == "x", f"{path} must be a whole ConfigMap volume"
    config_volume, config_name = mounted_file(pod, pod.sidecar, str(args.config))
    assert config_name in volume_files(config_volume)

    # The root file system is read-only: whatever the sidecar writes goes to a writable mount.
    assert pod.sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    run_dir = container_env(pod.sidecar)["PILLION_RUN_DIR"]
    volume, _ = mounted_file(pod, pod.sidecar, run_dir + "/x.json")
    assert "emptyDir" in volume

    # The components load with the sidecar's own loader, from the ConfigMap laid out as mounted.
    folders = {}
    for mount in pod.sidecar["volumeMounts"]:
        folders[mount["mountPath"]] = tmp_path / mount["name"]
        lay_out(pod.volume(mount["name"]), folders[mount["mountPath"]])
    components = load_components([Path(relocate(p, folders)) for p in resources], args.app_id)
    by_name = {c.name: c for c in components}
    assert {c.type for c in components} == {"secretstores.local.file", "state.redis", "pubsub.redis"}

    # Every secretKeyRef names a store that reads a file on a mounted Secret holding that key.
    for component in components:
        for ref in component.secret_refs:
            store = by_name[component.secret_store]
            secrets_file = store.metadata["secretsFile"]
            volume, inside = mounted_file(pod, pod.sidecar, secrets_file)
            assert "secret" in volume, f"{secrets_file} is not on a Secret volume"
            assert yaml.safe_load(volume_files(volume)[inside])[ref.name], ref

    configuration = load_configuration(Path(relocate(str(args.config), folders)))
    scopes = configuration.secret_scopes
    store_name = next(c.name for c in components if c.building_block == "secretstores")
    assert not scopes[store_name].allows("redis-password"), "the app should not read the Redis password"


def test_network_policy_opens_the_apps_port_and_not_the_sidecars() -> None:
    pod = the_pod()
    args = sidecar_args(pod.sidecar["args"])
    policy = k8s_object("NetworkPolicy", "orders-ingress")
    selector: dict[str, str] = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod.labels.items()
    assert "Ingress" in policy["spec"]["policyTypes"]
    allowed = {
        container_port(pod.app, p["port"]) for rule in policy["spec"]["ingress"] for p in rule["ports"]
    }
    assert args.app_port in allowed
    assert args.dapr_http_port not in allowed


def test_components_reach_the_redis_service_the_manifests_define() -> None:
    pod = the_pod()
    service = k8s_object("Service", "redis")
    addresses = {f"{service['metadata']['name']}:{p['port']}" for p in service["spec"]["ports"]}
    configmap = k8s_object("ConfigMap", pod.volume("components")["configMap"]["name"])
    hosts = set(re.findall(r"name: redisHost\s+value: (\S+)", "\n".join(configmap["data"].values())))
    assert hosts and hosts <= addresses


class _App(BaseHTTPRequestHandler):
    """The app container's stand-in: subscribes to nothing."""

    def do_GET(self) -> None:
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@contextlib.contextmanager
def app_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _App)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def manifest_redis(workdir: Path) -> Iterator[str]:
    """redis-server started with the arguments redis.yaml gives it (and its password)."""
    container = k8s_object("Deployment", "redis")["spec"]["template"]["spec"]["containers"][0]
    env = container_env(container)
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg) for arg in container["args"]]
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is needed (apt-get install redis-server)")
    port = free_port()
    workdir.mkdir()
    proc = subprocess.Popen(
        [server, *args, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, password=env["REDIS_PASSWORD"])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


# Starts a private redis-server with the manifest's own arguments (manifest_redis).
@pytest.mark.services
def test_the_kubernetes_pod_starts_and_serves_as_its_manifests_say(tmp_path: Path) -> None:
    pod = the_pod()
    container = pod.sidecar
    args = sidecar_args(container["args"])
    folders = {}
    for mount in container["volumeMounts"]:
        folders[mount["mountPath"]] = tmp_path / mount["name"]
        volume = pod.volume(mount["name"])
        if "emptyDir" in volume:
            folders[mount["mountPath"]].mkdir()
        else:
            lay_out(volume, folders[mount["mountPath"]])
    service = k8s_object("Service", "redis")
    in_cluster = f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"

    with manifest_redis(tmp_path / "redis") as redis_address, app_server() as app_port:
        # ConfigMap and Secret files are symlinks into ..data: rewrite the targets, not the links.
        for folder in folders.values():
            for file in (folder / "..data").resolve().iterdir() if (folder / "..data").exists() else ():
                file.write_text(relocate(file.read_text(), folders).replace(in_cluster, redis_address))
        port = free_port()
        argv = [relocate(arg, folders) for arg in container["args"]]
        argv = replace_flag(argv, "--dapr-http-port", str(port))
        argv = replace_flag(argv, "--metrics-port", str(free_port()))
        argv = replace_flag(argv, "--dapr-listen-addresses", "127.0.0.1")
        argv = replace_flag(argv, "--app-port", str(app_port))
        env = {name: relocate(value, folders) for name, value in container_env(container).items()}
        sidecar = start_sidecar(
            tmp_path,
            app_id=args.app_id,
            port=port,
            extra_args=argv,
            env=env,
            wait_path=container["startupProbe"]["httpGet"]["path"],
        )
        try:
            check_pod_sidecar(sidecar, container, env["DAPR_API_TOKEN"], redis_address)
        finally:
            assert sidecar.stop() == 0, sidecar.log()


def check_pod_sidecar(sidecar: SidecarProcess, container: Doc, token: str, redis_address: str) -> None:
    with sidecar.client() as client:
        deadline = time.monotonic() + 10
        for kind in ("readinessProbe", "livenessProbe"):
            # Liveness passes once the sidecar has seen the app's port open.
            while (status := client.get(container[kind]["httpGet"]["path"]).status_code) != 204:
                assert time.monotonic() < deadline, f"{kind}: {status}\n{sidecar.log()}"
                time.sleep(0.05)
        assert client.get("/v1.0/metadata").status_code == 401
        authorized = {"dapr-api-token": token}
        saved = client.post("/v1.0/state/statestore", json=[{"key": "k", "value": 1}], headers=authorized)
        assert saved.status_code == 204, saved.text
        published = client.post("/v1.0/publish/pubsub/orders", json={"n": 1}, headers=authorized)
        assert published.status_code == 204, published.text
        denied = client.get("/v1.0/secrets/pod-secrets/redis-password", headers=authorized)
        assert denied.status_code == 403, denied.text
    host, port = redis_address.split(":")
    password = secret_value("redis", "password")
    with redis.Redis(host=host, port=int(port), password=password) as direct:
        assert direct.exists(f"{sidecar.app_id}||k")
        assert direct.xlen("orders") == 1
    # The token and the password stay out of the log.
    assert token not in sidecar.log() and password not in sidecar.log()


# --- Docker Compose ------------------------------------------------------------------------------


def test_compose_wiring_agrees_with_the_sidecars_flags() -> None:
    services = compose()["services"]
    pillion, app = services["pillion"], services["app"]
    build = pillion["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    args = sidecar_args(pillion["command"])

    # One network namespace, as in a pod: the API can stay on loopback, so it needs no token.
    assert app["network_mode"] == "service:pillion"
    assert args.dapr_listen_addresses in LOOPBACK
    assert int(app["environment"]["DAPR_HTTP_PORT"]) == args.dapr_http_port
    assert app["depends_on"]["pillion"]["condition"] == "service_healthy"

    check = " ".join(pillion["healthcheck"]["test"])
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\S+?)'", check)
    assert url is not None, check
    assert int(url.group(1)) == args.dapr_http_port
    assert url.group(2) == "/v1.0/healthz/outbound"

    mounts = {v.split(":")[1]: COMPOSE.parent / v.split(":")[0] for v in pillion["volumes"]}
    resources = [p for item in args.resources_path for p in item.split(",") if p]
    assert resources and all(p in mounts for p in resources)
    components = load_components([mounts[p] for p in resources], args.app_id)
    hosts = {c.metadata["redisHost"].split(":")[0] for c in components if "redisHost" in c.metadata}
    assert hosts and hosts <= set(services)
    assert all(pillion["depends_on"][host]["condition"] == "service_healthy" for host in hosts)


def test_compose_sidecar_passes_its_healthcheck_and_serves_the_sample_app(
    tmp_path: Path, redis_url: str
) -> None:
    services = compose()["services"]
    pillion, app = services["pillion"], services["app"]
    args = sidecar_args(pillion["command"])
    resources = tmp_path / "components"
    shutil.copytree(COMPOSE.parent / pillion["volumes"][0].split(":")[0], resources)
    local_redis = redis_url.split("//")[1].split("/", maxsplit=1)[0]
    for file in resources.iterdir():
        file.write_text(file.read_text().replace("redis:6379", local_redis))
    port = free_port()
    argv = replace_flag(pillion["command"], "--dapr-http-port", str(port))
    argv = replace_flag(argv, "--metrics-port", str(free_port()))
    argv = replace_flag(argv, "--resources-path", str(resources))
    sidecar = start_sidecar(tmp_path, app_id=args.app_id, port=port, extra_args=argv)
    try:
        check = [str(part) for part in pillion["healthcheck"]["test"][1:]]
        check = [
            sys.executable if part == "python" else part.replace(f":{args.dapr_http_port}/", f":{port}/")
            for part in check
        ]
        assert subprocess.run(check, check=False, timeout=10).returncode == 0

        app_mounts = {v.split(":")[1]: COMPOSE.parent / v.split(":")[0] for v in app["volumes"]}
        command = [sys.executable if part == "python" else part for part in app["command"]]
        command = [relocate(part, app_mounts) for part in command]
        ran = subprocess.run(
            command,
            env={"DAPR_HTTP_PORT": str(port), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert ran.returncode == 0, ran.stderr
        assert re.search(r"visit number \d+", ran.stdout), ran.stdout
    finally:
        assert sidecar.stop() == 0, sidecar.log()

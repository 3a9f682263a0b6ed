"""Run the sample order flow end to end and check its outcome (standard library only).

checkout (Node) and fulfilment (Go) each run under their own ``pillion run`` on one component set;
this script posts a standard, a priority and a malformed order to checkout, waits until the shared
state store shows the outcome, prints a summary, stops both ``pillion run`` processes with SIGTERM
and exits with 1 if anything was not as expected. ``samples/run-flow --help`` lists the options.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
STORE = "statestore"
SECRET_NAME = "shipping-api-key"
# Lines of `pillion run` output worth showing without --verbose: the apps' own, and trouble.
SHOWN = re.compile(r"== APP == |^pillion: | (WARNING|ERROR|CRITICAL) ")


class FlowError(Exception):
    """The flow could not run at all (a missing tool, an app that did not start)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pillion_command() -> list[str]:
    """Pillion from this checkout's .venv (or $PILLION_PYTHON, as for the clients' tests)."""
    python = os.environ.get("PILLION_PYTHON") or str(ROOT / ".venv" / "bin" / "python")
    if Path(python).exists():
        return [python, "-m", "runtime"]
    found = shutil.which("pillion")
    if found is None:
        raise FlowError("pillion is not installed: run ./scripts/demo once to create .venv")
    return [found]


def call(method: str, url: str, body: object = None, timeout: float = 5) -> tuple[int, Any]:
    """One HTTP request; the answer's JSON (or None when it has no body)."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json"} if data is not None else {}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    return status, json.loads(raw) if raw.strip() else None


# --- component sets ----------------------------------------------------------------------------


def redis_components(url: str, target: Path) -> Path:
    """samples/components/redis with redisHost, redisPassword and redisDB taken from ``url``."""
    parts = urlsplit(url)
    values = {
        "redisHost": f"{parts.hostname or 'localhost'}:{parts.port or 6379}",
        "redisPassword": parts.password or "",
        "redisDB": parts.path.strip("/") or "0",
    }
    shutil.copytree(SAMPLES / "components" / "redis", target)
    for file in target.glob("*.yaml"):
        text = file.read_text()
        for name, value in values.items():
            # json.dumps quotes the value as YAML reads it; the replacement is literal text.
            quoted = json.dumps(value).replace("\\", "\\\\")
            text = re.sub(rf"(- name: {name}\n\s+value: ).*", rf"\g<1>{quoted}", text)
        file.write_text(text)
    return target


# --- the two apps ------------------------------------------------------------------------------


@dataclass
class App:
    name: str
    command: list[str]
    app_port: int = field(default_factory=free_port)
    dapr_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    _pump: threading.Thread | None = None

    @property
    def dapr(self) -> str:
        return f"http://127.0.0.1:{self.dapr_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.app_port}"

    def start(self, pillion: list[str], resources: Path, workdir: Path, verbose: bool) -> None:
        args = [
            *pillion,
            "run",
            "--app-id",
            self.name,
            "--app-port",
            str(self.app_port),
            "--dapr-http-port",
            str(self.dapr_port),
            "--resources-path",
            str(resources),
            "--data-dir",
            str(workdir / "data" / self.name),
            "--",
            *self.command,
        ]
        self.log_path = workdir / f"{self.name}.log"
        # Its own session: a Ctrl-C here reaches this script only, which then stops it once.
        self.proc = subprocess.Popen(
            args,
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        self._pump = threading.Thread(
            target=self._copy_output, args=(self.proc.stdout, self.log_path, verbose), daemon=True
        )
        self._pump.start()

    def _copy_output(self, stream: IO[bytes], log_path: Path, verbose: bool) -> None:
        with log_path.open("w") as log:
            for raw in stream:
                line = raw.decode(errors="replace").rstrip("\n")
                log.write(line + "\n")
                log.flush()
                if verbose or SHOWN.search(line):
                    print(f"[{self.name}] {line}", flush=True)

    def tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, deadline: float) -> None:
        """Until the sidecar's /v1.0/healthz says 204: components up, the app's subscriptions started."""
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise FlowError(
                    f"{self.name} exited with {self.proc.returncode} while starting:\n{self.tail()}"
                )
            try:
                if call("GET", f"{self.dapr}/v1.0/healthz", timeout=1)[0] == 204:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise FlowError(f"{self.name} was not ready in time:\n{self.tail()}")

    def stop(self, grace: float = 15) -> str | None:
        """SIGTERM, as an operator would; what went wrong, or None for a clean exit (code 0)."""
        if self.proc is None:
            return "never started"
        problem = None
        if self.proc.poll() is not None:
            problem = f"it had already exited, with code {self.proc.returncode}"
        else:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                problem = f"still running {grace:g} s after SIGTERM: killed"
            if problem is None and self.proc.returncode != 0:
                problem = f"exit code {self.proc.returncode} after SIGTERM"
        if self._pump is not None:
            self._pump.join(5)
        return problem


# --- the checks --------------------------------------------------------------------------------


@dataclass
class Check:
    what: str
    problem: str | None  # None when it held


StateTest = Callable[[dict[str, Any]], str | None]  # the state read -> None when fine, else why not


def state_tests(ids: dict[str, str], secret: str) -> dict[str, StateTest]:
    standard, priority, bad = ids["standard"], ids["priority"], ids["malformed"]

    def label(order_id: str) -> str:
        return hmac.new(secret.encode(), order_id.encode(), hashlib.sha256).hexdigest()[:16]

    def shipped(order_id: str, route: str) -> StateTest:
        def test(state: dict[str, Any]) -> str | None:
            order = state.get(f"order-{order_id}")
            if not order or order.get("status") != "shipped":
                return f"order-{order_id} is {order and order.get('status')!r}, not 'shipped'"
            if order.get("route") != route:
                return f"order-{order_id} went the {order.get('route')!r} route, not {route!r}"
            return None

        return test

    def rejected(state: dict[str, Any]) -> str | None:
        order, dead = state.get(f"order-{bad}"), state.get(f"dead-{bad}")
        if not dead:
            return f"no dead-letter record dead-{bad}"
        if "qty" not in dead.get("reason", ""):
            return f"dead-{bad} gives the reason {dead.get('reason')!r}"
        if not order or order.get("status") != "rejected":
            return f"order-{bad} is {order and order.get('status')!r}, not 'rejected'"
        return None

    def shipments(state: dict[str, Any]) -> str | None:
        for order_id in (standard, priority):
            shipment = state.get(f"shipment-{order_id}")
            if not shipment:
                return f"checkout has no shipment-{order_id} (from the shipments topic)"
            if shipment.get("label") != label(order_id):
                return f"shipment-{order_id} has label {shipment.get('label')!r}: not signed with the secret"
        if f"shipment-{bad}" in state:
            return f"the malformed order {bad} was shipped"
        return None

    def quotes(state: dict[str, Any]) -> str | None:
        for order_id, carrier in ((standard, "ground"), (priority, "express")):
            quote = (state.get(f"order-{order_id}") or {}).get("quote")
            if not quote or quote.get("carrier") != carrier or not quote.get("totalCents"):
                return f"order-{order_id} has the quote {quote!r}, not fulfilment's {carrier} price"
        return None

    return {
        "checkout asked fulfilment for quotes by service invocation": quotes,
        f"standard order {standard}: shipped on the default route": shipped(standard, "standard"),
        f"priority order {priority}: shipped on the priority route": shipped(priority, "priority"),
        f"malformed order {bad}: dead-lettered and rejected": rejected,
        "shipments reached checkout, labels signed with the secret": shipments,
    }


def read_state(sidecar: str, keys: list[str]) -> dict[str, Any]:
    status, items = call("POST", f"{sidecar}/v1.0/state/{STORE}/bulk", {"keys": keys})
    if status != 200:
        raise FlowError(f"bulk state read answered {status}: {items}")
    return {item["key"]: item["data"] for item in items if "data" in item}


def run_orders(checkout: App, ids: dict[str, str], secret: str, timeout: float) -> list[Check]:
    orders = {
        "standard": {"id": ids["standard"], "item": "book", "qty": 2},
        "priority": {"id": ids["priority"], "item": "lamp", "qty": 1, "priority": True},
        "malformed": {"id": ids["malformed"], "item": "ghost", "qty": 0},
    }
    for kind, order in orders.items():
        status, answer = call("POST", f"{checkout.url}/orders", order)
        if status != 201:
            raise FlowError(f"checkout answered {status} to the {kind} order: {answer}")
    status, answer = call("POST", f"{checkout.url}/orders", orders["standard"])
    duplicate = Check(
        f"a second order {ids['standard']} is refused (first-write)",
        None if status == 409 else f"checkout answered {status}: {answer}",
    )
    # Poll the shared store through checkout's sidecar until everything holds, or time is up.
    tests = state_tests(ids, secret)
    keys = [f"{kind}-{i}" for i in ids.values() for kind in ("order", "dead", "shipment")]
    deadline = time.monotonic() + timeout
    while True:
        state = read_state(checkout.dapr, keys)
        checks = [Check(what, test(state)) for what, test in tests.items()]
        if all(c.problem is None for c in checks) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    status, answer = call("GET", f"{checkout.url}/orders/{ids['priority']}")
    complete = status == 200 and answer["order"].get("status") == "shipped" and answer.get("shipment")
    view = Check(
        f"checkout's GET /orders/{ids['priority']} shows the order with its shipment",
        None if complete else f"GET /orders/{ids['priority']} answered {status}: {answer}",
    )
    return [*checks, duplicate, view]


# --- main --------------------------------------------------------------------------------------


def build_fulfilment(workdir: Path) -> Path:
    if shutil.which("go") is None:
        raise FlowError("go is not installed (Go 1.19 or newer; Debian: apt-get install golang-go)")
    binary = workdir / "fulfilment"
    built = subprocess.run(
        ["go", "build", "-o", str(binary), "."],
        cwd=SAMPLES / "fulfilment",
        capture_output=True,
        text=True,
        check=False,
    )
    if built.returncode != 0:
        raise FlowError(f"go build of samples/fulfilment failed:\n{built.stderr}")
    return binary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="samples/run-flow", description=__doc__.split("\n\n")[0])
    parser.add_argument("--components", choices=["embedded", "redis"], default="embedded")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL", "redis://localhost:6379/0"),
        help="Redis for --components redis (default: $REDIS_URL, else redis://localhost:6379/0)",
    )
    parser.add_argument(
        "--workdir", type=Path, help="where data and logs go (default: a new temporary folder)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder after a pass")
    parser.add_argument("--fulfilment-binary", type=Path, help="a fulfilment built before (skips go build)")
    parser.add_argument("--timeout", type=float, default=30, help="seconds for each wait (30)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show every sidecar log line")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("node") is None:
        print("run-flow: node is not installed (Node.js 18 or newer)", file=sys.stderr)
        return 1
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pillion-sample-"))
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"== the order flow on the {args.components} components (work dir {workdir})", flush=True)
    apps: list[App] = []
    checks: list[Check] = []
    try:
        pillion = pillion_command()
        binary = args.fulfilment_binary.resolve() if args.fulfilment_binary else build_fulfilment(workdir)
        resources = SAMPLES / "components" / "embedded"
        if args.components == "redis":
            resources = redis_components(args.redis_url, workdir / "components")
        secret = json.loads((resources / "secrets.json").read_text())[SECRET_NAME]
        apps = [
            App("fulfilment", [str(binary)]),
            App("checkout", ["node", str(SAMPLES / "checkout" / "app.mjs")]),
        ]
        for app in apps:
            app.start(pillion, resources, workdir, args.verbose)
        for app in apps:
            app.wait_ready(time.monotonic() + args.timeout)
        run = uuid.uuid4().hex[:6]
        ids = {kind: f"{run}-{n}" for n, kind in enumerate(("standard", "priority", "malformed"), 1)}
        checks = run_orders(apps[1], ids, secret, args.timeout)
    except (FlowError, OSError) as exc:
        checks.append(Check("the flow ran", str(exc)))
    finally:
        for app in reversed(apps):
            checks.append(Check(f"{app.name}: pillion run stopped cleanly on SIGTERM", app.stop()))
    print()
    for check in checks:
        print(f"  {'ok  ' if check.problem is None else 'FAIL'}  {check.what}")
        if check.problem is not None:
            print(textwrap.indent(check.problem, " " * 8))
    failed = [c for c in checks if c.problem is not None]
    took = time.monotonic() - started
    if failed:
        print(f"\nFAIL: {len(failed)} of {len(checks)} checks ({took:.1f} s); logs in {workdir}")
        return 1
    print(f"\nPASS: {len(checks)} checks on the {args.components} components ({took:.1f} s)")
    if args.workdir is None and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

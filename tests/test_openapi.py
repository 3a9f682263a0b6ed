"""docs/openapi.yaml and the server agree (issue 7): every route is documented, every documented
route exists, and every error answer documents its body."""

from __future__ import annotations

import re
from typing import Any

import schemathesis
import yaml
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp

from runtime.http.app import create_app
from runtime.lifecycle.sidecar import Sidecar, SidecarOptions
from tests.support import ROOT

SPEC = ROOT / "docs" / "openapi.yaml"
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
# Starlette's path convertors ({topic:path}) are plain parameters in OpenAPI.
_CONVERTOR = re.compile(r"\{(\w+):\w+\}")


def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    return loaded


def starlette_app(app: ASGIApp) -> Starlette:
    """The Starlette app inside the middlewares create_app wraps it in."""
    while not isinstance(app, Starlette):
        app = app.app  # type: ignore[attr-defined]
    return app


def served_routes(options: SidecarOptions) -> set[tuple[str, str]]:
    app = starlette_app(create_app(Sidecar(options)))
    found: set[tuple[str, str]] = set()
    for route in app.routes:
        assert isinstance(route, Route), f"unexpected route type {route!r}"
        assert route.methods, f"{route.path} takes any method"
        path = _CONVERTOR.sub(r"{\1}", route.path)
        found |= {(method, path) for method in route.methods}
    return found


def documented_routes(document: dict[str, Any], *, api: bool = True) -> set[tuple[str, str]]:
    """Operations of the API server (``api``) or of the servers a path names itself (metrics)."""
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        if ("servers" not in item) == api
        for method in item
        if method in HTTP_METHODS
    }


def test_the_spec_is_valid_openapi() -> None:
    schemathesis.openapi.from_dict(spec()).validate()


def test_the_cli_fuzzing_config_loads_and_names_real_operations() -> None:
    """tests/schemathesis.toml, for the longer `schemathesis run` in docs/reliability.md."""
    schemathesis.Config.from_path(ROOT / "tests" / "schemathesis.toml")
    ids = {
        op["operationId"] for item in spec()["paths"].values() for op in item.values() if "operationId" in op
    }
    assert {"shutdown", "metrics"} <= ids


def test_every_route_is_documented_and_every_documented_route_is_served() -> None:
    served = served_routes(SidecarOptions(app_id="openapi"))
    documented = documented_routes(spec())
    assert served - documented == set(), "routes missing from docs/openapi.yaml"
    assert documented - served == set(), "documented routes the server does not have"


def test_the_routes_do_not_depend_on_the_token_or_metrics() -> None:
    # Both wrap the app in middleware; neither may add or hide a route.
    plain = served_routes(SidecarOptions(app_id="openapi", enable_metrics=False))
    guarded = served_routes(SidecarOptions(app_id="openapi", api_token="t"))
    assert plain == guarded == served_routes(SidecarOptions(app_id="openapi"))


def test_the_metrics_server_is_documented_on_its_own_port() -> None:
    document = spec()
    assert documented_routes(document, api=False) == {("GET", "/metrics")}
    servers = document["paths"]["/metrics"]["servers"]
    assert [s["url"] for s in servers] == ["http://127.0.0.1:9090"]


def _resolve(document: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _error_codes(document: dict[str, Any], node: Any) -> set[str]:
    node = _resolve(document, node)
    found: set[str] = set()
    if isinstance(node, dict):
        found |= set(_resolve(document, node.get("properties", {}).get("errorCode", {})).get("enum", []))
        for value in node.values():
            found |= _error_codes(document, value)
    elif isinstance(node, list):
        for value in node:
            found |= _error_codes(document, value)
    return found


def test_every_error_status_documents_its_body() -> None:
    """A JSON error answer lists the exact errorCodes it may carry; the others are plain text."""
    document = spec()
    problems: list[str] = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue
                content = _resolve(document, response).get("content", {})
                where = f"{method.upper()} {path} {status}"
                if not content:
                    problems.append(f"{where}: no body described")
                if "application/json" in content and not _error_codes(document, content["application/json"]):
                    problems.append(f"{where}: no errorCode listed")
                problems += [
                    f"{where}: {kind}" for kind in content if kind not in ("application/json", "text/plain")
                ]
    assert problems == []


def test_every_route_with_a_token_documents_the_refusal() -> None:
    document = spec()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS or operation.get("security") == []:
                continue
            assert "401" in operation["responses"], f"{method.upper()} {path}"

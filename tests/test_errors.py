"""The error catalogue (runtime/errors.py): each errorCode defined once, built in one place, and
every (HTTP status, errorCode) pair the same as docs/openapi.yaml documents."""

from __future__ import annotations

import inspect
import itertools
import re
from collections.abc import Callable, Iterator
from typing import Any

from runtime import errors
from runtime.errors import APIError, Code, ErrorInfo, GrpcCode
from tests.support import ROOT
from tests.test_openapi import HTTP_METHODS, _error_codes, _resolve, spec

# Sample arguments by annotation, enough to build every error each constructor can return.
_SAMPLES: dict[str, list[Any]] = {
    "str": ["x"],
    "int": [2],
    "object": ["x"],
    "Mapping[str, str]": [{}],
    "Sequence[str]": [(), ("x",)],
    "EtagProblem": [None, "mismatch", "invalid"],
}
# Answers that an errorCode enum cannot list, each named in the spec's text instead.
_NAMED_IN_TEXT = {(500, "ERR_INTERNAL"), (500, "ERR_DIRECT_INVOKE")}
# No HTTP route can carry an empty pubsub name (the path would not match): a gRPC-only answer.
_GRPC_ONLY = {
    (404, "ERR_PUBSUB_EMPTY"),
    # DeleteBulkState has no HTTP route.
    (400, "ERR_STATE_BULK_DELETE"),
    (409, "ERR_STATE_BULK_DELETE"),
    (500, "ERR_STATE_BULK_DELETE"),
}


def constructors() -> dict[str, Callable[..., APIError]]:
    return {
        name: function
        for name, function in vars(errors).items()
        if inspect.isfunction(function)
        and not name.startswith("_")
        and inspect.signature(function).return_annotation == "APIError"
    }


def built() -> Iterator[tuple[str, APIError]]:
    """Every error every constructor returns, with the constructor's name."""
    for name, function in constructors().items():
        parameters = inspect.signature(function).parameters.values()
        for arguments in itertools.product(*(_SAMPLES[str(p.annotation)] for p in parameters)):
            yield name, function(*arguments)


def documented() -> set[tuple[int, str]]:
    document = spec()
    pairs: set[tuple[int, str]] = set()
    for item in document["paths"].values():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            for status, response in operation["responses"].items():
                content = _resolve(document, response).get("content", {})
                if "application/json" in content:
                    codes = _error_codes(document, content["application/json"])
                    pairs |= {(int(status), code) for code in codes}
    return pairs


def test_every_answer_is_the_one_openapi_documents() -> None:
    answers = {(error.status, str(error.code)) for _, error in built()}
    spec_text = (ROOT / "docs" / "openapi.yaml").read_text()
    for status, code in _NAMED_IN_TEXT:
        assert f"{status} `{code}`" in spec_text
    assert sorted(answers - documented() - _NAMED_IN_TEXT - _GRPC_ONLY) == []
    assert sorted(documented() - answers) == []


def test_every_code_is_used() -> None:
    used = {error.code for _, error in built()}
    assert sorted(set(Code) - used) == []


def test_errors_are_built_only_in_runtime_errors() -> None:
    direct = re.compile(r"\bAPIError\(")
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("runtime", "components")
        for path in (ROOT / folder).rglob("*.py")
        if path.name != "errors.py" and direct.search(path.read_text())
    ]
    assert offenders == []


def test_every_error_has_a_grpc_status() -> None:
    for name, error in built():
        assert error.grpc is not GrpcCode.OK, name
        assert error.message, name
        if error.details:  # daprd's rich errors always carry an ErrorInfo
            assert error.error_info is not None, name


def test_the_three_kinds_of_daprd_error_over_grpc() -> None:
    """Rich errors send their details; basic ones an ErrorInfo whose reason is the errorCode
    (and nothing over HTTP); the older ones nothing at all."""
    basic = errors.state_get_failed("store", "k", "boom")
    assert basic.details == ()
    assert basic.grpc_details == (ErrorInfo("ERR_STATE_GET"),)
    plain = errors.secret_get_failed("store", "name", "boom")
    assert plain.details == plain.grpc_details == ()
    rich = errors.state_illegal_key("store", "a||b")
    assert [type(d).__name__ for d in rich.details] == ["ErrorInfo", "ResourceInfo", "BadRequest"]
    assert [type(d).__name__ for d in rich.grpc_details] == ["BadRequest", "ResourceInfo", "ErrorInfo"]


def test_not_found_sends_its_metadata_over_http_only() -> None:
    error = errors.state_store_not_found("store", "app")
    assert error.details == (ErrorInfo("DAPR_STATE_NOT_FOUND", {"appID": "app"}, metadata_over_grpc=False),)
    assert error.error_info is not None
    assert (error.error_info.reason, dict(error.error_info.metadata)) == ("DAPR_STATE_NOT_FOUND", {})


def test_state_and_pubsub_errors_name_their_resource() -> None:
    resource = errors.state_illegal_key("store", "a||b").resource_info
    assert resource is not None
    assert (resource.resource_type, resource.resource_name) == ("state", "store")
    forbidden = errors.pubsub_forbidden("pubsub", "orders", "app")
    assert forbidden.resource_info is not None
    assert forbidden.resource_info.resource_name == "pubsub"
    assert forbidden.grpc is GrpcCode.PERMISSION_DENIED
    assert errors.state_save_failed("s", "x", "mismatch").grpc is GrpcCode.ABORTED

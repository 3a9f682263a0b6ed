"""``InvokeService`` over gRPC (issue 15, item 1): the same invocation as ``/v1.0/invoke``, called
with the Dapr protos and with the official Python SDK, an HTTP app as the callee."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from dapr.clients import DaprClient
from dapr.conf import settings
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import dapr_pb2_grpc, invoke_pb2
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from tests.invoke_support import Pair, invoke_pair
from tests.support import SidecarProcess


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    with invoke_pair(tmp_path_factory.mktemp("grpc-invoke"), "g1", "ginv-a", "ginv-b") as found:
        yield found


def _request(
    app_id: str,
    method: str,
    verb: common_pb2.HTTPExtension.Verb.ValueType = common_pb2.HTTPExtension.POST,
    data: bytes = b"",
    query: str = "",
) -> invoke_pb2.InvokeServiceRequest:
    return invoke_pb2.InvokeServiceRequest(
        id=app_id,
        message=common_pb2.InvokeRequest(
            method=method,
            data=any_pb2.Any(value=data),
            content_type="application/json",
            http_extension=common_pb2.HTTPExtension(verb=verb, querystring=query),
        ),
    )


def _error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    trailers: dict[str, Any] = {m.key: m.value for m in error.trailing_metadata() or ()}
    raw = trailers.get("grpc-status-details-bin")
    if raw is None:
        return None
    for holder in status_pb2.Status.FromString(raw).details:
        info = error_details_pb2.ErrorInfo()
        if holder.Unpack(info):
            return info
    return None


def _stub(sidecar: SidecarProcess) -> tuple[grpc.Channel, Any]:
    channel = grpc.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}")
    return channel, dapr_pb2_grpc.DaprStub(channel)  # type: ignore[no-untyped-call]


def test_the_app_gets_verb_path_query_metadata_and_body(pair: Pair) -> None:
    caller, _, _ = pair
    request = _request("ginv-b", "echo/orders/1", common_pb2.HTTPExtension.PUT, b'{"n": 1}', "x=1&y=%2F")
    channel, stub = _stub(caller)
    with channel:
        response, call = stub.InvokeService.with_call(request, metadata=[("x-user", "kept")], timeout=30)
    seen = json.loads(response.data.value)
    assert seen["method"] == "PUT"
    assert seen["path"] == "/echo/orders/1?x=1&y=%2F"
    assert seen["body"] == '{"n": 1}'
    headers = {name.lower(): value for name, value in seen["headers"]}
    assert headers["x-user"] == "kept"
    assert headers["content-type"] == "application/json"
    assert headers["dapr-caller-app-id"] == "ginv-a" and headers["dapr-callee-app-id"] == "ginv-b"
    assert "traceparent" in headers
    assert response.content_type.startswith("application/json")
    assert ("dapr-http-status", "200") in call.initial_metadata()


def test_an_error_answer_is_a_status_with_daprs_details(pair: Pair) -> None:
    caller, _, _ = pair
    channel, stub = _stub(caller)
    with channel:
        with pytest.raises(grpc.RpcError) as not_found:
            stub.InvokeService(_request("ginv-b", "status/404"), timeout=30)
        with pytest.raises(grpc.RpcError) as unavailable:
            stub.InvokeService(_request("ginv-b", "status/503"), timeout=30)
        with pytest.raises(grpc.RpcError) as nobody:
            stub.InvokeService(_request("ginv-nobody", "x"), timeout=30)
    assert not_found.value.code() == grpc.StatusCode.NOT_FOUND
    assert not_found.value.details() == "Not Found"
    info = _error_info(not_found.value)
    assert info is not None and info.reason == "Not Found" and info.domain == "dapr.io"
    assert dict(info.metadata) == {"http.code": "404", "http.error_message": "status 404"}
    assert ("dapr-http-status", "404") in not_found.value.initial_metadata()  # type: ignore[attr-defined]
    assert unavailable.value.code() == grpc.StatusCode.UNAVAILABLE
    assert nobody.value.code() == grpc.StatusCode.INTERNAL
    assert nobody.value.details() == "failed to invoke, id: ginv-nobody, err: no host found with the given ID"


def test_the_python_sdk_invokes_over_grpc(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    caller, _, _ = pair
    # The SDK finds the sidecar as an app under `pillion run` would, and waits for its health.
    monkeypatch.setenv("DAPR_HTTP_PORT", str(caller.port))
    monkeypatch.setenv("DAPR_GRPC_PORT", str(caller.grpc_port))
    monkeypatch.setattr(settings, "DAPR_API_METHOD_INVOCATION_PROTOCOL", "grpc")
    with DaprClient() as client:
        response = client.invoke_method("ginv-b", "echo/sdk", data=b"hello", http_verb="POST")
    seen = json.loads(response.data)
    assert seen["method"] == "POST" and seen["path"] == "/echo/sdk" and seen["body"] == "hello"

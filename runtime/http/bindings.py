"""Output binding endpoint: ``{"data", "metadata", "operation"}`` in, the component's bytes out."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from runtime.blocks.bindings import BindingsBlock, OutputBindingFailed
from runtime.errors import malformed
from runtime.http.wire import (
    JSON,
    decode_json,
    encode_value,
    error_response,
    field,
    optional_string,
    path_param,
    read_body,
    string_map,
)


def _block(request: Request) -> BindingsBlock:
    block: BindingsBlock = request.app.state.sidecar.blocks.get(BindingsBlock)
    return block


def _metadata_headers(metadata: dict[str, str]) -> dict[str, str]:
    """Response metadata as ``metadata.<key>`` headers; bytes a header cannot carry are dropped."""
    headers: dict[str, str] = {}
    for key, value in metadata.items():
        name = "metadata." + key
        if any(c in name for c in " \t\r\n:") or not name.isascii():
            continue
        headers[name] = value.replace("\r", " ").replace("\n", " ").encode().decode("latin-1")
    return headers


async def invoke(request: Request) -> Response:
    name = path_param(request, "name")
    body = decode_json(await read_body(request))
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise malformed("failed deserializing HTTP body: the body must be a JSON object")
    # daprd encodes `data` as JSON again before the component sees it: a string keeps its quotes.
    data = encode_value(field(body, "data"))
    metadata = string_map(field(body, "metadata"), "metadata")
    operation = optional_string(field(body, "operation"), "operation")
    try:
        response = await _block(request).invoke(name, data, metadata, operation)
    except OutputBindingFailed as exc:
        rendered = error_response(exc.error)
        rendered.headers.update(_metadata_headers(exc.metadata))
        return rendered
    if response is None:
        return Response(status_code=204)
    return Response(response.data or b"", 200, _metadata_headers(response.metadata), media_type=JSON)

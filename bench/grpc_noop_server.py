"""A gRPC server that answers every unary call at once, in one of the server models grpcio offers:

    python -m bench.grpc_noop_server PORT MODEL      # MODEL: aio, aio-uvloop, threaded

It reads the request as a GetStateRequest and answers a small GetStateResponse, so it pays the
same protobuf work as a real call; nothing else. bench.grpc compares the models' CPU per call at
the benchmark's load, which is how Pillion's model (grpc.aio on the sidecar's uvloop) was chosen.
"""

from __future__ import annotations

import asyncio
import sys
from concurrent import futures
from typing import Any

import grpc
import uvloop
from dapr.proto.runtime.v1 import state_pb2

ANSWER = state_pb2.GetStateResponse(data=b'{"n":1}', etag="1")


def _answer(request: bytes, context: Any) -> bytes:
    state_pb2.GetStateRequest.FromString(request)
    return ANSWER.SerializeToString()


async def _answer_async(request: bytes, context: Any) -> bytes:
    return _answer(request, context)


class _Everything(grpc.GenericRpcHandler):
    def __init__(self, handler: Any) -> None:
        self._handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(handler)

    def service(self, handler_call_details: Any) -> Any:
        return self._handler


async def serve_async(port: int) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_Everything(_answer_async),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    port, model = int(sys.argv[1]), sys.argv[2]
    if model == "threaded":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        server.add_generic_rpc_handlers((_Everything(_answer),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        server.wait_for_termination()
    elif model == "aio-uvloop":
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve_async(port))
    elif model == "aio":
        asyncio.run(serve_async(port))
    else:
        sys.exit(f"unknown model {model!r}: aio, aio-uvloop or threaded")


if __name__ == "__main__":
    main()

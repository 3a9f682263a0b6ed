"""The gRPC methods of issue 16's blocks: ``InvokeBinding``, ``TryLockAlpha1``, ``UnlockAlpha1``,
``GetConfiguration`` / ``GetConfigurationAlpha1``. Each reads the protobuf request, calls the
block, and builds the protobuf response; the rules and errors are the blocks' (docs/grpc.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.blocks.bindings import BindingsBlock, OutputBindingFailed
from runtime.blocks.configuration import ConfigurationAPIBlock
from runtime.blocks.lock import LockBlock
from runtime.grpc.protos import binding_pb2, common_pb2, configuration_pb2, lock_pb2

if TYPE_CHECKING:
    from runtime.grpc.api import Call
    from runtime.lifecycle.sidecar import Sidecar


class BlocksAPI:
    def __init__(self, sidecar: Sidecar) -> None:
        self._sidecar = sidecar

    async def invoke_binding(
        self, request: binding_pb2.InvokeBindingRequest, call: Call
    ) -> binding_pb2.InvokeBindingResponse:
        block = self._sidecar.blocks.get(BindingsBlock)
        # Unlike HTTP, gRPC hands the bytes to the component as they are (no JSON encoding).
        try:
            found = await block.invoke(request.name, request.data, dict(request.metadata), request.operation)
        except OutputBindingFailed as exc:
            raise exc.error from None
        if found is None:
            return binding_pb2.InvokeBindingResponse()
        return binding_pb2.InvokeBindingResponse(data=found.data or b"", metadata=found.metadata)

    async def try_lock(self, request: lock_pb2.TryLockRequest, call: Call) -> lock_pb2.TryLockResponse:
        block = self._sidecar.blocks.get(LockBlock)
        success = await block.try_lock(
            request.store_name, request.resource_id, request.lock_owner, request.expiry_in_seconds
        )
        return lock_pb2.TryLockResponse(success=success)

    async def unlock(self, request: lock_pb2.UnlockRequest, call: Call) -> lock_pb2.UnlockResponse:
        block = self._sidecar.blocks.get(LockBlock)
        status = await block.unlock(request.store_name, request.resource_id, request.lock_owner)
        return lock_pb2.UnlockResponse(status=int(status))  # type: ignore[arg-type]

    async def get_configuration(
        self, request: configuration_pb2.GetConfigurationRequest, call: Call
    ) -> configuration_pb2.GetConfigurationResponse:
        block = self._sidecar.blocks.get(ConfigurationAPIBlock)
        items = await block.get(request.store_name, list(request.keys), dict(request.metadata))
        answer = configuration_pb2.GetConfigurationResponse()
        for key, item in items.items():
            answer.items[key].CopyFrom(
                common_pb2.ConfigurationItem(value=item.value, version=item.version, metadata=item.metadata)
            )
        return answer

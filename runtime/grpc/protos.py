"""The generated Dapr modules Pillion uses, from the official SDK's wheel (``dapr``).

The wheel's ``dapr.proto`` and ``dapr.proto.runtime.v1`` packages import every generated module in
their ``__init__`` (workflows, AI, vector search, ... and the SDK's settings): about 5 MB of memory
and 0.1 s the sidecar would carry for nothing. The modules below are loaded through bare
stand-ins for those two packages, removed again afterwards, so that a later ``import dapr.proto``
(the SDK's own, in a test process) still runs the real ones and finds these modules loaded.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.find_spec("dapr")
assert _spec is not None and _spec.submodule_search_locations, "the dapr package is a dependency"
_ROOT = Path(next(iter(_spec.submodule_search_locations)))
_HEAVY = {"dapr.proto": _ROOT / "proto", "dapr.proto.runtime.v1": _ROOT / "proto" / "runtime" / "v1"}
_stand_ins = [name for name in _HEAVY if name not in sys.modules]
for _name in _stand_ins:
    _package = importlib.machinery.ModuleSpec(_name, None, is_package=True)
    _package.submodule_search_locations = [str(_HEAVY[_name])]
    sys.modules[_name] = importlib.util.module_from_spec(_package)
try:
    from dapr.proto.common.v1 import common_pb2
    from dapr.proto.runtime.v1 import (
        appcallback_pb2,
        appcallback_pb2_grpc,
        binding_pb2,
        configuration_pb2,
        invoke_pb2,
        lock_pb2,
        metadata_pb2,
        pubsub_pb2,
        secret_pb2,
        state_pb2,
    )
finally:
    for _name in _stand_ins:
        del sys.modules[_name]
        _parent, _, _child = _name.rpartition(".")
        if _parent in sys.modules:
            vars(sys.modules[_parent]).pop(_child, None)

__all__ = [
    "appcallback_pb2",
    "appcallback_pb2_grpc",
    "binding_pb2",
    "common_pb2",
    "configuration_pb2",
    "invoke_pb2",
    "lock_pb2",
    "metadata_pb2",
    "pubsub_pb2",
    "secret_pb2",
    "state_pb2",
]

"""The Dapr gRPC API (``dapr.proto.runtime.v1.Dapr``) and the gRPC channel to apps (docs/grpc.md).

grpcio is configured before its first import: ``pillion run`` forks to start the app (which
execs at once, so grpc's fork handlers have nothing to do, and they log a line on stderr each
time), and grpc's core must not write its own lines into the sidecar's log (``--log-as-json``
promises one JSON object per line). A value the user set wins; the ones set here are listed in
``SIDECAR_ONLY`` so that ``pillion run`` keeps them out of the app's environment.
"""

import os

_DEFAULTS = {"GRPC_ENABLE_FORK_SUPPORT": "false", "GRPC_VERBOSITY": "NONE"}
SIDECAR_ONLY = frozenset(name for name in _DEFAULTS if name not in os.environ)
for _name in SIDECAR_ONLY:
    os.environ[_name] = _DEFAULTS[_name]

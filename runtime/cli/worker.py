"""An API worker of ``--workers N`` (runtime/lifecycle/workers.py): started by the primary sidecar
with its options on standard input, never by a user."""

from __future__ import annotations

import asyncio
import os
import pickle
import sys

from runtime.cli.main import configure_logging, loop_factory
from runtime.http.connections import raise_open_file_limit
from runtime.lifecycle.sidecar import Sidecar, SidecarOptions, StartupError
from runtime.resources.loader import ResourceError


def main() -> int:
    options = pickle.load(sys.stdin.buffer)
    if not isinstance(options, SidecarOptions) or options.primary_port is None:
        print("pillion: this module is started by `pillion serve --workers N`, not by hand", file=sys.stderr)
        return 2
    configure_logging(options.log_level, f"[worker {os.getpid()}] ", options.log_as_json, options.app_id)
    raise_open_file_limit()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        try:
            runner.run(Sidecar(options).serve())
        except (ResourceError, StartupError) as exc:
            print(f"pillion: API worker: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""daprd and ``dapr run`` flags that scripts and quickstarts pass but that cannot apply to Pillion.

Each is accepted, and a one-line warning says why it has no effect, instead of a crash on an
unknown flag. Flags that do change behaviour are in runtime/cli/main.py.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

# (flags, takes a value, why it has no effect)
_IGNORED: tuple[tuple[tuple[str, ...], bool, str], ...] = (
    (("--placement-host-address",), True, "Pillion has no actors, so no placement service"),
    (("--scheduler-host-address",), True, "Pillion has no scheduler service"),
    (("--enable-profiling",), False, "no Go profiler here; profile with py-spy"),
    (("--profile-port",), True, "no Go profiler here; profile with py-spy"),
    (("--unix-domain-socket", "-u"), True, "the API listens on TCP only"),
    (("--app-max-concurrency",), True, "calls to the app are not limited in this version"),
    (("--read-buffer-size", "--dapr-http-read-buffer-size"), True, "HTTP buffers are sized by uvicorn"),
    (("--kubernetes", "-k"), False, "Pillion runs the app here; use deploy/kubernetes for a cluster"),
    (("--runtime-path",), True, "Pillion needs no daprd binary"),
    (("--mode",), True, "Pillion has one mode; Kubernetes is detected from its environment"),
    (("--control-plane-address", "--sentry-address"), True, "Pillion needs no control plane (pillion certs)"),
)


def add_ignored_flags(parser: argparse.ArgumentParser, run_mode: bool) -> None:
    group = parser.add_argument_group("accepted for compatibility, without effect (a warning says why)")
    for flags, takes_value, _ in _IGNORED:
        names = [f for f in flags if run_mode or f.startswith("--")]
        dest = "ignored_" + flags[0].lstrip("-").replace("-", "_")
        if takes_value:
            group.add_argument(*names, dest=dest, metavar="VALUE", help=argparse.SUPPRESS)
        else:
            group.add_argument(
                *names, dest=dest, nargs="?", const="true", metavar="BOOL", help=argparse.SUPPRESS
            )


def warn_ignored(args: argparse.Namespace, warn: Callable[[str], None]) -> None:
    for flags, _, why in _IGNORED:
        value = getattr(args, "ignored_" + flags[0].lstrip("-").replace("-", "_"), None)
        if value is not None:
            warn(f"{flags[0]} is accepted but has no effect: {why}")

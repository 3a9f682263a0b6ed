"""``pillion`` command line. Flag names follow daprd's so existing scripts carry over."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from runtime import __version__
from runtime.resources import ResourceError
from runtime.sidecar import Sidecar, SidecarOptions, StartupError

_SIZE = re.compile(r"^\s*(\d+)\s*([KMGkmg]i?|[Bb]?)\s*$")
_UNITS = {"": 1, "b": 1, "k": 1000, "ki": 1024, "m": 1000**2, "mi": 1024**2, "g": 1000**3, "gi": 1024**3}


def parse_size(text: str) -> int:
    """``4Mi``, ``512Ki``, ``10M`` or a byte count, as Kubernetes quantities are written."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (examples: 4Mi, 512Ki, 1048576)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port number")
    return value


def _add_sidecar_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--app-id", required=True, help="the app's id; state keys are prefixed with it")
    parser.add_argument("--dapr-http-port", type=_port, default=3500, help="HTTP API port (3500)")
    parser.add_argument(
        "--dapr-listen-addresses",
        default="127.0.0.1",
        help="address the HTTP API binds to (127.0.0.1)",
    )
    parser.add_argument(
        "--resources-path",
        "--components-path",
        action="append",
        default=[],
        help="folder of Dapr resource YAML files; repeatable or comma-separated. "
        "Without it the embedded default (SQLite state store 'statestore') is used.",
    )
    parser.add_argument("--app-port", type=_port, help="port the app listens on, if it takes calls")
    parser.add_argument("--app-channel-address", default="127.0.0.1", help="address of the app")
    parser.add_argument(
        "--max-body-size", type=parse_size, default=parse_size("4Mi"), help="request body limit (4Mi)"
    )
    parser.add_argument("--data-dir", type=Path, help="where embedded stores live (~/.pillion/<app-id>)")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warn", "warning", "error", "fatal"]
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pillion", description="A Dapr-compatible sidecar.")
    parser.add_argument("--version", action="version", version=f"pillion {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the sidecar in the foreground")
    _add_sidecar_flags(serve)
    return parser


def options_from_args(args: argparse.Namespace) -> SidecarOptions:
    paths = [Path(p) for item in args.resources_path for p in item.split(",") if p]
    return SidecarOptions(
        app_id=args.app_id,
        http_port=args.dapr_http_port,
        host=args.dapr_listen_addresses,
        resources_paths=paths,
        app_port=args.app_port,
        app_channel_address=args.app_channel_address,
        max_body_size=args.max_body_size,
        data_dir=args.data_dir,
        log_level=args.log_level,
    )


def configure_logging(level: str) -> None:
    name = {"warn": "WARNING", "fatal": "CRITICAL"}.get(level, level.upper())
    logging.basicConfig(
        level=name,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # uvloop is optional where it cannot be built
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _serve(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    configure_logging(options.log_level)
    sidecar = Sidecar(options)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(sidecar.serve())
    except (ResourceError, StartupError) as exc:
        print(f"pillion: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())

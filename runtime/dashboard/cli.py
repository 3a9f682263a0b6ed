"""The ``pillion dashboard`` command: flags, listen-address rules, then the server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from components.metadata import parse_duration

LOOPBACK = ("127.0.0.1", "localhost", "::1")
log = logging.getLogger("pillion.dashboard")


def _interval(text: str) -> float:
    try:
        seconds = parse_duration(text, 1.0)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 0.2 <= seconds <= 60:
        raise argparse.ArgumentTypeError(f"{text!r} must be from 200ms to 60s")
    return seconds


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("dashboard", help="serve a web page showing the sidecars on this machine")
    parser.add_argument("--port", type=int, default=8080, help="port of the page (8080)")
    parser.add_argument("--address", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument(
        "--allow-remote-access", action="store_true", help="allow an --address other than loopback"
    )
    parser.add_argument(
        "--api-token-file",
        type=Path,
        help="file holding the API token (default: DAPR_API_TOKEN); the page asks for it, and it is "
        "sent to the sidecars",
    )
    parser.add_argument("--read-only", action="store_true", help="refuse replaying and purging dead letters")
    parser.add_argument(
        "--refresh-interval",
        type=_interval,
        default=1.0,
        metavar="DURATION",
        help="how often the sidecars are asked for their state: seconds or a Go duration (1s)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "warning", "error"])


def _token(args: argparse.Namespace) -> str | None:
    if args.api_token_file is not None:
        return args.api_token_file.read_text().strip() or None
    return os.environ.get("DAPR_API_TOKEN") or None


def run(args: argparse.Namespace) -> int:
    name = {"warn": "WARNING"}.get(args.log_level, args.log_level.upper())
    logging.basicConfig(
        level=name, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        token = _token(args)
    except OSError as exc:
        print(f"pillion: --api-token-file {args.api_token_file}: {exc.strerror}", file=sys.stderr)
        return 1
    if args.address not in LOOPBACK:
        if not args.allow_remote_access:
            print(
                f"pillion: refusing to listen on {args.address}: the dashboard would be reachable from "
                "other machines; pass --allow-remote-access if that is intended",
                file=sys.stderr,
            )
            return 1
        if not token:
            log.warning(
                "listening on %s without an API token: anyone who can reach this port sees the apps%s",
                args.address,
                "" if args.read_only else " and can replay or purge dead letters",
            )
    from runtime.dashboard.server import DashboardOptions, serve

    options = DashboardOptions(
        address=args.address,
        port=args.port,
        token=token,
        read_only=args.read_only,
        interval=args.refresh_interval,
        remote=args.address not in LOOPBACK,
    )
    try:
        asyncio.run(serve(options))
    except OSError as exc:
        print(f"pillion: cannot listen on {args.address}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0

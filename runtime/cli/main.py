"""``pillion`` command line. Flag names follow daprd's so existing scripts carry over."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from components.metadata import parse_duration
from runtime import __version__
from runtime.cli import deadletters as deadletters_cli
from runtime.cli import secrets as secrets_cli
from runtime.cli import status
from runtime.cli.compat_flags import add_ignored_flags, warn_ignored
from runtime.dashboard import cli as dashboard_cli
from runtime.delivery.app_health import HealthCheck
from runtime.http.connections import RESERVED_DESCRIPTORS, ConnectionLimits, raise_open_file_limit
from runtime.invocation.service import InvocationOptions
from runtime.lifecycle.ports import free_port
from runtime.lifecycle.run import run
from runtime.lifecycle.sidecar import Sidecar, SidecarOptions, StartupError
from runtime.observability.jsonlog import JsonFormatter
from runtime.resources.loader import ResourceError

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


def _bool(text: str) -> bool:
    """Go's flag package spellings, as daprd accepts them."""
    value = text.strip().lower()
    if value in ("1", "t", "true"):
        return True
    if value in ("0", "f", "false"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def _duration(bare_unit_seconds: float) -> Callable[[str], float]:
    """A positive Go duration, or a bare number in ``bare_unit_seconds``; in seconds."""

    def parse(text: str) -> float:
        try:
            seconds = parse_duration(text, bare_unit_seconds)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if seconds <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be more than zero")
        return seconds

    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return value


def _health_check(args: argparse.Namespace) -> HealthCheck | None:
    if not args.enable_app_health_check:
        return None
    if args.app_port is None:
        raise StartupError("--enable-app-health-check needs --app-port: there is no app to probe")
    if args.app_health_probe_timeout > args.app_health_probe_interval:
        raise StartupError("--app-health-probe-timeout must not be longer than --app-health-probe-interval")
    path = args.app_health_check_path
    return HealthCheck(
        path=path if path.startswith("/") else "/" + path,
        interval=args.app_health_probe_interval,
        timeout=args.app_health_probe_timeout,
        threshold=args.app_health_threshold,
    )


def _add_sidecar_flags(parser: argparse.ArgumentParser, run_mode: bool = False) -> None:
    def short(*flags: str) -> list[str]:
        # The Dapr CLI's short forms; daprd (pillion serve) has none.
        return [f for f in flags if run_mode or f.startswith("--")]

    parser.add_argument(
        *short("--app-id", "-a"), required=not run_mode, help="the app's id; state keys are prefixed with it"
    )
    parser.add_argument(
        *short("--dapr-http-port", "-H"),
        type=_port,
        default=None if run_mode else 3500,
        help="HTTP API port (a free one when omitted)" if run_mode else "HTTP API port (3500)",
    )
    parser.add_argument(
        *short("--dapr-grpc-port", "-G"),
        type=_port,
        default=None,
        help="gRPC API port (a free one when omitted)"
        if run_mode
        else "gRPC API port (50001; when omitted and taken, gRPC is not served)",
    )
    parser.add_argument(
        "--dapr-listen-addresses",
        default="127.0.0.1",
        help="address the HTTP API binds to (127.0.0.1)",
    )
    parser.add_argument(
        *short("--resources-path", "--components-path", "-d"),
        action="append",
        default=[],
        help="folder of Dapr resource YAML files; repeatable or comma-separated. "
        "Without it the embedded default (SQLite state store 'statestore') is used.",
    )
    parser.add_argument(
        *short("--app-port", "-p"), type=_port, help="port the app listens on, if it takes calls"
    )
    parser.add_argument("--app-channel-address", default="127.0.0.1", help="address of the app")
    parser.add_argument(
        "--max-body-size", type=parse_size, default=parse_size("4Mi"), help="request body limit (4Mi)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="where the embedded default stores live (default ~/.pillion, shared by all apps)",
    )
    parser.add_argument(
        *short("--config", "-c"),
        type=Path,
        help="a Configuration resource file (secret scopes, API allow/deny lists)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warn", "warning", "error", "fatal"]
    )
    parser.add_argument("--log-as-json", action="store_true", help="one JSON object per log line")
    parser.add_argument(
        "--enable-metrics",
        type=_bool,
        nargs="?",
        const=True,
        default=True,
        metavar="BOOL",
        help="serve Prometheus metrics (true); --enable-metrics=false turns them off",
    )
    parser.add_argument(
        *short("--metrics-port", "-M"),
        type=_port,
        default=None if run_mode else 9090,
        help=f"loopback port for /metrics ({'a free one when omitted' if run_mode else '9090'})",
    )
    parser.add_argument(
        "--api-token-file",
        type=Path,
        help="file holding the API token (default: the DAPR_API_TOKEN environment variable)",
    )
    parser.add_argument(
        "--allow-remote-access",
        action="store_true",
        help="allow --dapr-listen-addresses other than loopback",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=5.0,
        help="seconds in-flight deliveries may take to finish when stopping (5)",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="serve the HTTP API from N processes sharing its port (1); see docs/workers.md",
    )
    limits = parser.add_argument_group("connections to the API")
    limits.add_argument(
        "--http-read-header-timeout",
        type=_duration(1.0),
        default=10.0,
        metavar="DURATION",
        help="time a client has to send a request's headers, as daprd (10s)",
    )
    limits.add_argument(
        "--http-read-body-timeout",
        type=_duration(1.0),
        default=60.0,
        metavar="DURATION",
        help="time a client has to send a request's body once its headers came (60s)",
    )
    limits.add_argument(
        "--http-max-connections",
        type=_positive_int,
        default=None,
        help="connections served at once; beyond it only health probes are answered "
        f"(the open-file limit less {RESERVED_DESCRIPTORS})",
    )
    _add_invocation_flags(parser, short)
    add_ignored_flags(parser, run_mode)
    health = parser.add_argument_group("app health checks (deliveries pause while the app is unhealthy)")
    health.add_argument(
        "--enable-app-health-check",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        metavar="BOOL",
        help="probe the app's health (false); needs --app-port",
    )
    health.add_argument("--app-health-check-path", default="/healthz", help="path probed with GET (/healthz)")
    health.add_argument(
        "--app-health-probe-interval",
        type=_duration(1.0),
        default=5.0,
        metavar="DURATION",
        help="time between probes: seconds or a Go duration such as 500ms (5)",
    )
    health.add_argument(
        "--app-health-probe-timeout",
        type=_duration(0.001),
        default=0.5,
        metavar="DURATION",
        help="time a probe may take: milliseconds, as in daprd, or a Go duration such as 2s (500)",
    )
    health.add_argument(
        "--app-health-threshold",
        type=_positive_int,
        default=3,
        help="failed probes in a row that make the app unhealthy (3)",
    )


def _add_invocation_flags(parser: argparse.ArgumentParser, short: Callable[..., list[str]]) -> None:
    group = parser.add_argument_group("service invocation (docs/invocation.md)")
    group.add_argument(
        *short("--app-protocol", "-P"),
        default="http",
        choices=["http", "https", "grpc", "grpcs", "h2c"],
        help="how the sidecar calls the app (http); grpc: its AppCallback service (docs/grpc.md)",
    )
    group.add_argument(
        "--app-ssl", action="store_true", help="same as --app-protocol https (deprecated in Dapr)"
    )
    group.add_argument(
        *short("--dapr-internal-grpc-port", "-I"),
        type=_port,
        default=0,
        help="port other sidecars call this one on (a free one when omitted)",
    )
    group.add_argument(
        "--dapr-internal-grpc-listen-address",
        default="127.0.0.1",
        help="address of that port (127.0.0.1; 0.0.0.0 for calls from other hosts)",
    )
    group.add_argument(
        "--enable-mtls",
        type=_bool,
        nargs="?",
        const=True,
        default=True,
        metavar="BOOL",
        help="mutual TLS between sidecars (true); false is allowed on loopback only",
    )
    group.add_argument("--ca-dir", type=Path, help="the CA made by pillion certs (~/.pillion/ca)")
    group.add_argument(
        "--cert-ttl",
        type=_duration(1.0),
        default=3600.0,
        metavar="DURATION",
        help="life of this sidecar's certificate, renewed at 2/3 of it (1h)",
    )
    group.add_argument(
        "--enable-api-logging",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        metavar="BOOL",
        help="log a line for every API call (false)",
    )


def _invocation_options(args: argparse.Namespace) -> InvocationOptions:
    protocol = "https" if args.app_ssl and args.app_protocol == "http" else args.app_protocol
    if protocol == "grpc":
        # Pub/sub and health checks use the app's AppCallback service (runtime/grpc/app_channel.py).
        logging.getLogger("pillion").warning(
            "--app-protocol grpc: service invocation of a gRPC app (OnInvoke) is not supported yet"
        )
        protocol = "http"
    elif protocol in ("grpcs", "h2c"):
        logging.getLogger("pillion").warning(
            "--app-protocol %s: the app is called over HTTP/1.1%s; only plaintext gRPC apps are supported",
            protocol,
            " with TLS" if protocol == "grpcs" else "",
        )
        protocol = "https" if protocol == "grpcs" else "http"
    return InvocationOptions(
        internal_port=args.dapr_internal_grpc_port,
        internal_host=args.dapr_internal_grpc_listen_address,
        enable_mtls=args.enable_mtls,
        ca_dir=args.ca_dir,
        cert_ttl=args.cert_ttl,
        app_protocol=protocol,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pillion", description="A Dapr-compatible sidecar.")
    parser.add_argument("--version", action="version", version=f"pillion {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the sidecar in the foreground")
    _add_sidecar_flags(serve)
    run = commands.add_parser(
        "run",
        help="run an app with its sidecar, sharing its fate",
        usage="pillion run --app-id ID [flags] -- COMMAND [ARGS...]",
    )
    _add_sidecar_flags(run, run_mode=True)
    run.add_argument(
        "--app-grace-period",
        type=float,
        default=5.0,
        help="seconds between SIGTERM and SIGKILL when the app must stop (5)",
    )
    run.add_argument(
        "-f",
        "--run-file",
        help="a Dapr multi-app run file, or a folder holding dapr.yaml: every app with its own sidecar",
    )
    # Set by `pillion run -f` for each app: output lines read "== APP - <id> == ...".
    run.add_argument("--output-label", default="", help=argparse.SUPPRESS)
    run.add_argument("app_command", nargs=argparse.REMAINDER, help="the app's command, after --")
    certs_command(commands)
    secrets_cli.add_commands(commands)
    status.add_command(commands)
    dashboard_cli.add_command(commands)
    deadletters_cli.add_command(commands)
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
        drain_timeout=args.drain_timeout,
        config_file=args.config,
        enable_metrics=args.enable_metrics,
        metrics_port=args.metrics_port,
        api_token=_api_token(args),
        app_health=_health_check(args),
        connection_limits=ConnectionLimits(
            args.http_read_header_timeout, args.http_read_body_timeout, args.http_max_connections
        ),
        grpc_port=args.dapr_grpc_port,
        app_protocol=args.app_protocol,
        invocation=_invocation_options(args),
        api_logging=args.enable_api_logging,
        log_as_json=args.log_as_json,
        workers=args.workers,
    )


def _api_token(args: argparse.Namespace) -> str | None:
    if args.api_token_file is not None:
        try:
            return args.api_token_file.read_text().strip() or None
        except OSError as exc:
            raise StartupError(f"--api-token-file {args.api_token_file}: {exc.strerror}") from None
    return os.environ.get("DAPR_API_TOKEN") or None


def check_listen_address(options: SidecarOptions, allow_remote: bool) -> None:
    """Loopback unless asked for; remote access without a token deserves a loud warning."""
    if options.host in ("127.0.0.1", "localhost", "::1"):
        return
    if not allow_remote:
        raise StartupError(
            f"refusing to listen on {options.host}: the API would be reachable from other machines; "
            "pass --allow-remote-access if that is intended"
        )
    if not options.api_token:
        logging.getLogger("pillion").warning(
            "listening on %s without an API token: anyone who can reach this port can use the API "
            "(set DAPR_API_TOKEN or --api-token-file)",
            options.host,
        )


def configure_logging(level: str, prefix: str = "", as_json: bool = False, app_id: str | None = None) -> None:
    name = {"warn": "WARNING", "fatal": "CRITICAL"}.get(level, level.upper())
    if as_json:
        # No prefix: every line must parse on its own.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter(app_id))
        logging.basicConfig(level=name, handlers=[handler])
        return
    logging.basicConfig(
        level=name,
        format=prefix + "%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # uvloop is optional where it cannot be built
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def tell(args: argparse.Namespace, message: str, level: int = logging.INFO) -> None:
    """A line for the user: plain text, or a log record when every line must be JSON."""
    if args.log_as_json:
        logging.getLogger("pillion").log(level, "%s", message)
    else:
        print(f"pillion: {message}", file=sys.stderr)


def _serve(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, as_json=args.log_as_json, app_id=args.app_id)
    warn_ignored(args, lambda line: tell(args, line, logging.WARNING))
    try:
        options = options_from_args(args)
        check_listen_address(options, args.allow_remote_access)
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            try:
                runner.run(Sidecar(options).serve())
            except (ResourceError, StartupError) as exc:
                # Said before the loop closes: closing it waits for whatever tasks are left.
                tell(args, str(exc), logging.ERROR)
                return 1
    except (ResourceError, StartupError) as exc:
        tell(args, str(exc), logging.ERROR)
        return 1
    return 0


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    command = args.app_command[1:] if args.app_command[:1] == ["--"] else args.app_command
    if args.run_file is not None:
        from runtime.lifecycle.runfile import run_file

        return run_file(args.run_file)
    if not args.app_id:
        parser.error("pillion run needs --app-id (or -f with a multi-app run file)")
    if not command:
        parser.error("pillion run needs the app's command after --")
    if args.dapr_http_port is None:
        args.dapr_http_port = free_port()
    if args.dapr_grpc_port is None:
        args.dapr_grpc_port = 0  # bound by the OS when the server starts: no race for a free port
    if args.metrics_port is None:
        args.metrics_port = free_port()
    label = f" - {args.output_label}" if args.output_label else ""
    configure_logging(args.log_level, f"== PILLION{label} == ", as_json=args.log_as_json, app_id=args.app_id)
    warn_ignored(args, lambda line: tell(args, line, logging.WARNING))
    try:
        options = options_from_args(args)
        check_listen_address(options, args.allow_remote_access)
        tell(args, f"app {options.app_id!r} with its sidecar on http://{options.host}:{options.http_port}")
        prefix = f"== APP{label} == ".encode()
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            try:
                return runner.run(run(options, command, args.app_grace_period, options.api_token, prefix))
            except (ResourceError, StartupError) as exc:
                tell(args, str(exc), logging.ERROR)
                return 1
    except (ResourceError, StartupError) as exc:
        tell(args, str(exc), logging.ERROR)
        return 1


def certs_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("certs", help="create the local CA that signs the sidecars' certificates")
    parser.add_argument("--ca-dir", type=Path, help="where to write ca.crt and ca.key (~/.pillion/ca)")
    parser.add_argument("--trust-domain", default="public", help="SPIFFE trust domain (public)")
    parser.add_argument(
        "--validity",
        type=_duration(3600.0),
        default=365 * 24 * 3600.0,
        metavar="DURATION",
        help="how long the CA is valid: hours or a Go duration (8760h)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing CA")


def certs(args: argparse.Namespace) -> int:
    import datetime

    from runtime.invocation.mtls import CertificateError, create_ca, default_ca_dir

    directory = args.ca_dir or default_ca_dir()
    try:
        path = create_ca(directory, args.trust_domain, datetime.timedelta(seconds=args.validity), args.force)
    except CertificateError as exc:
        print(f"pillion: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"pillion: cannot write the CA in {directory}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"pillion: CA for trust domain {args.trust_domain!r} written to {path} (key beside it, mode 0600)")
    print("pillion: copy this folder to every host whose sidecars should call each other (--ca-dir)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("serve", "run"):
        raise_open_file_limit()
    if args.command == "serve":
        return _serve(args)
    if args.command == "run":
        return _run(args, parser)
    if args.command == "secrets":
        return secrets_cli.run(args)
    if args.command == "status":
        return status.run(args)
    if args.command == "certs":
        return certs(args)
    if args.command == "dashboard":
        return dashboard_cli.run(args)
    if args.command == "deadletters":
        return deadletters_cli.run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())

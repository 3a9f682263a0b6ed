"""The sidecar process: options, component life cycle, readiness, and the HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from runtime import __version__
from runtime.blocks.base import BlockContext, LoadedComponent
from runtime.blocks.hooks import AppFacing
from runtime.blocks.pubsub import PubSubBlock
from runtime.blocks.registry import Blocks
from runtime.blocks.secrets import Redactor, SecretsBlock
from runtime.blocks.state import StateBlock
from runtime.cli.status import Registration, register, unregister
from runtime.delivery.app_health import AppHealthCollector, HealthCheck
from runtime.delivery.subscriptions import Subscription, SubscriptionError, from_resource
from runtime.http.connections import ConnectionLimits, protocol_class
from runtime.invocation.service import InvocationOptions
from runtime.lifecycle import embedded
from runtime.lifecycle.component_set import ComponentSet, StartupError
from runtime.lifecycle.deadlines import STOP_SLACK, exit_after
from runtime.observability.metrics import InFlightCollector, Metrics, MetricsServer
from runtime.observability.resource_monitor import ResourceMonitor
from runtime.observability.tracing import Tracer, create_tracer
from runtime.resources.configuration import Configuration, load_configuration
from runtime.resources.loader import (
    ComponentResource,
    load_components,
    load_subscriptions,
    validate_component,
)
from runtime.resources.resiliency import Resiliency, load_resiliency

if TYPE_CHECKING:
    from runtime.blocks.outbox import Outbox
    from runtime.delivery.app_channel import AppChannel
    from runtime.delivery.event_sink import AppConnection
    from runtime.grpc.server import GrpcServer
    from runtime.invocation.service import ServiceInvocation
    from runtime.lifecycle.hot_reload import ResourceWatcher
    from runtime.lifecycle.workers import ApiWorkers

__all__ = ["Sidecar", "SidecarOptions", "StartupError"]

log = logging.getLogger("pillion")


@dataclass
class SidecarOptions:
    app_id: str
    http_port: int = 3500
    host: str = "127.0.0.1"
    resources_paths: list[Path] = field(default_factory=list)
    app_port: int | None = None
    app_channel_address: str = "127.0.0.1"
    max_body_size: int = 4 * 1024 * 1024
    data_dir: Path | None = None
    log_level: str = "info"
    # How long in-flight work (deliveries to the app) may take to finish once stopping.
    drain_timeout: float = 5.0
    # DAPR_API_TOKEN: when set, every API call but the health probes must carry it.
    api_token: str | None = None
    # --config: the Configuration resource (secret scopes, API switches).
    config_file: Path | None = None
    # --enable-metrics / --metrics-port: Prometheus text on its own loopback port.
    enable_metrics: bool = True
    metrics_port: int = 9090
    # --enable-app-health-check and its settings; None when the app's health is not probed.
    app_health: HealthCheck | None = None
    # Deadlines on reading a request and the cap on connections (--http-read-*, --http-max-connections).
    connection_limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    # --dapr-grpc-port: None tries the default 50001 and goes on without gRPC when it is taken;
    # 0 takes any free port (pillion run).
    grpc_port: int | None = None
    # --app-protocol as given; with grpc, pub/sub and health checks call the app's AppCallback service.
    app_protocol: str = "http"
    # Internal port, mTLS and app protocol for service invocation (runtime/invocation/service.py).
    invocation: InvocationOptions = field(default_factory=InvocationOptions)
    # --enable-api-logging: one log line per API call.
    api_logging: bool = False
    log_as_json: bool = False
    # --workers N: N processes serve the HTTP API on one port (runtime/lifecycle/workers.py).
    workers: int = 1
    # Set in the extra processes of --workers: the primary's private port, for what only the
    # primary can answer (metadata, shutdown, configuration subscriptions, the admin API).
    primary_port: int | None = None

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir or Path.home() / ".pillion" / self.app_id


def default_components(options: SidecarOptions) -> list[ComponentResource]:
    """With no resources path: ``statestore`` and ``pubsub`` in SQLite files shared by every app
    (runtime/lifecycle/embedded.py)."""
    return embedded.default_components(options.data_dir)


class Sidecar:
    def __init__(self, options: SidecarOptions) -> None:
        self.options = options
        self.declared_subscriptions: list[Subscription] = []
        # A problem found after serving began (the app's subscriptions): stop, then exit with it.
        self._fatal: str | None = None
        self.configuration = Configuration()
        self.blocks = Blocks(BlockContext(options.app_id, self.configuration))
        self.redactor = Redactor()
        self.components = ComponentSet(
            options.app_id,
            options.resolved_data_dir,
            self.blocks,
            self.redactor,
            embedded.shared_folder(options.data_dir),
        )
        self.components_ready = False
        self.app_reachable = options.app_port is None
        self._background: set[asyncio.Task[None]] = set()
        self._server: _Server | None = None
        # Set with PUT /v1.0/metadata/{key}; shown under "extended" in /v1.0/metadata.
        self.extended: dict[str, str] = {}
        self.metrics = Metrics(options.app_id)
        self.metrics.registry.register(ResourceMonitor(options.app_id, self._app_pid))
        self.metrics.registry.register(InFlightCollector(options.app_id, self._in_flight))
        self._metrics_server: MetricsServer | None = None
        self._registration: Path | None = None
        self.tracer = Tracer()
        # The HTTP channel to the app: made when first needed (health probes, subscriptions).
        self.channel: AppConnection | None = None
        self.grpc: GrpcServer | None = None
        self._watcher: ResourceWatcher | None = None
        self.workers: ApiWorkers | None = None
        self.outbox: Outbox | None = None
        self.invocation: ServiceInvocation | None = None
        self.resiliency: Resiliency | None = None

    # --- start and stop ------------------------------------------------------------------------

    def load_resources(self) -> list[ComponentResource]:
        if self.options.config_file is not None:
            self.configuration = load_configuration(self.options.config_file)
        if self.options.resources_paths:
            components = load_components(self.options.resources_paths, self.options.app_id)
            self.resiliency = load_resiliency(self.options.resources_paths, self.options.app_id)
            subscriptions = load_subscriptions(self.options.resources_paths, self.options.app_id)
            try:
                self.declared_subscriptions = [from_resource(s) for s in subscriptions]
            except SubscriptionError as exc:
                raise StartupError(str(exc)) from None
            return components
        defaults = default_components(self.options)
        for resource in defaults:
            validate_component(resource)
        return defaults

    @property
    def state(self) -> StateBlock:
        return self.blocks.get(StateBlock)

    @property
    def pubsub(self) -> PubSubBlock:
        return self.blocks.get(PubSubBlock)

    @property
    def secrets(self) -> SecretsBlock:
        return self.blocks.get(SecretsBlock)

    async def start_components(self, resources: list[ComponentResource]) -> None:
        for handler in logging.getLogger().handlers:
            handler.addFilter(self.redactor)
        # Whatever a library logs (a header dump at debug level), the tokens never show.
        self.redactor.add(t for t in (self.options.api_token, os.environ.get("APP_API_TOKEN")) if t)
        # Input bindings and configuration pushes speak HTTP to the app; a gRPC app gets neither
        # (docs/grpc.md: not implemented).
        channel = self._http_app_channel if self._app_speaks_http() else None
        context = BlockContext(
            self.options.app_id,
            self.configuration,
            self.metrics,
            self.tracer,
            app_channel=channel,
            resiliency=self.resiliency,
        )
        self.blocks = Blocks(context)
        self.components.blocks = self.blocks
        await self.components.start(resources)
        await self._start_outbox()
        self.pubsub.declare(self.declared_subscriptions)
        self.components_ready = True

    async def _start_outbox(self) -> None:
        """Relay staged messages of the state stores with an outbox (runtime/blocks/outbox.py)."""
        stores = self.state.outbox_stores()
        if not stores:
            return
        from runtime.blocks.outbox import Outbox

        self.outbox = Outbox(self.options.app_id, self.state, self.pubsub)
        self.state.outbox = self.outbox
        await self.outbox.start(stores)

    async def stop_components(self) -> None:
        for task in self._background:
            task.cancel()
        if self.invocation is not None:
            await self.invocation.close()
            self.invocation = None
        if self._watcher is not None:
            await self._watcher.close()
        # Deliveries in flight finish (within drain_timeout) before their brokers close.
        await self.pubsub.stop_subscriptions(self.options.drain_timeout)
        if self.outbox is not None:
            await self.outbox.stop()
        for block in self.blocks.all():
            if isinstance(block, AppFacing):
                await block.stop()
        if self.channel is not None:
            await self.channel.aclose()
            self.channel = None
        await self.components.close()

    async def subscriptions_reloaded(self, declared: list[Subscription]) -> None:
        """After a hot reload: restart the subscriptions whose definition or pubsub changed."""
        self.declared_subscriptions = declared
        await self.pubsub.reload(declared, self.options.drain_timeout)
        if self.app_reachable and not self.pubsub.started and self.options.app_port is not None:
            # The first pubsub arrived after the app was found: its subscriptions start now.
            await self.start_subscriptions()

    async def _start_invocation(self) -> None:
        from runtime.invocation.service import InvocationSetupError, ServiceInvocation

        invocation = ServiceInvocation(self, self.options.invocation)
        self.invocation = invocation
        try:
            await invocation.start()
        except InvocationSetupError as exc:
            raise StartupError(str(exc)) from None

    def spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _wait_for_app_port(self) -> None:
        assert self.options.app_port is not None
        while True:
            try:
                _, writer = await asyncio.open_connection(
                    self.options.app_channel_address, self.options.app_port
                )
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            log.info("app is reachable on port %d", self.options.app_port)
            health = self.channel.health if self.channel is not None else None
            if health is not None:
                # As daprd: nothing starts before the app has passed a health check once.
                health.probe_now()
                await health.wait_healthy()
            await self.start_subscriptions()
            if self._app_speaks_http():
                for block in self.blocks.all():
                    if isinstance(block, AppFacing):
                        await block.app_ready(self._http_app_channel())
            self.app_reachable = True
            return

    def _app_speaks_http(self) -> bool:
        return self.options.app_port is not None and self.options.app_protocol != "grpc"

    def _http_app_channel(self) -> AppChannel:
        from runtime.delivery.app_channel import AppChannel

        channel = self.app_channel()
        assert isinstance(channel, AppChannel)
        return channel

    def app_channel(self) -> AppConnection:
        if self.channel is None:
            options = self.options
            assert options.app_port is not None
            if options.app_protocol == "grpc":
                from runtime.grpc.app_channel import GrpcAppChannel

                self.channel = GrpcAppChannel(
                    options.app_channel_address,
                    options.app_port,
                    options.app_id,
                    options.app_health,
                    options.max_body_size,
                )
            else:
                from runtime.delivery.app_channel import AppChannel

                self.channel = AppChannel(
                    options.app_channel_address, options.app_port, options.app_id, options.app_health
                )
        return self.channel

    def _start_app_health(self) -> None:
        """Probe the app from now on; its state shows in metadata and as ``pillion_app_healthy``."""
        health = self.app_channel().health
        assert health is not None
        self.metrics.registry.register(AppHealthCollector(self.options.app_id, health))
        self.spawn(health.run())

    async def start_subscriptions(self) -> None:
        """GET /dapr/subscribe, then deliver; daprd does this only when a pubsub is loaded."""
        assert self.options.app_port is not None
        if not self.pubsub.has_brokers:
            return
        try:
            await self.pubsub.start_subscriptions(self.app_channel())
        except SubscriptionError as exc:
            log.error("%s", exc)
            self._fatal = str(exc)
            self.request_stop()

    # --- runtime information -------------------------------------------------------------------

    async def unreachable_components(self) -> list[str]:
        """Names of components whose backend does not answer a ping right now."""
        return await self.components.unreachable()

    def not_ready(self) -> list[str]:
        waiting = []
        if not self.components_ready:
            waiting.append("components")
        if not self.app_reachable:
            waiting.append("app")
        return waiting

    def metadata(self) -> dict[str, Any]:
        version = f"pillion-{__version__}"
        app: dict[str, Any] = {
            "protocol": self.options.app_protocol,
            "channelAddress": self.options.app_channel_address,
        }
        if self.options.app_port is not None:
            app["port"] = self.options.app_port
        extended = {**self.extended, "daprRuntimeVersion": version}
        health = self.channel.health if self.channel is not None else None
        if health is not None:
            app["health"] = health.check.describe()
            if self.options.app_protocol == "grpc":
                del app["health"]["healthCheckPath"]  # a gRPC app is probed with HealthCheck
            # Pillion's own key: the contract has no place for the state the probes found.
            extended["appHealth"] = health.status
        body: dict[str, Any] = {
            "id": self.options.app_id,
            "runtimeVersion": version,
            "extended": extended,
            "appConnectionProperties": app,
            "actorRuntime": {"runtimeStatus": "DISABLED", "hostReady": False},
        }
        components = [
            {
                "name": c.resource.name,
                "type": c.resource.type,
                "version": c.resource.version or "v1",
                **({"capabilities": c.capabilities} if c.capabilities else {}),
            }
            for c in self.components.components
        ]
        if components:
            body["components"] = components
        if self.components.not_loaded:
            # Pillion's own key: daprd would have refused to start instead.
            body["componentsNotLoaded"] = [c.describe() for c in self.components.not_loaded]
        subscriptions = self.pubsub.describe_subscriptions()
        if subscriptions:
            body["subscriptions"] = subscriptions
        return body

    def component_report(self) -> list[dict[str, Any]]:
        """Every component, loaded or failed (with the reason), for ``pillion dashboard``."""
        loaded = [
            {
                "name": c.resource.name,
                "type": c.resource.type,
                "version": c.resource.version or "v1",
                "status": "loaded",
                "capabilities": c.capabilities,
            }
            for c in self.components.components
        ]
        failed = [
            {
                "name": r.name,
                "type": r.type,
                "version": r.version or "v1",
                "status": "failed",
                "reason": reason,
            }
            for r, reason in self.components.failed.values()
        ]
        return loaded + failed

    # --- serving -------------------------------------------------------------------------------

    def bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.options.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.options.workers > 1 or self.api_worker:
            # The processes of --workers share the port; the kernel spreads connections over them.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((self.options.host, self.options.http_port))
        except OSError as exc:
            sock.close()
            raise StartupError(
                f"cannot listen on {self.options.host}:{self.options.http_port}: {exc.strerror}"
            ) from None
        sock.listen(2048)
        sock.setblocking(False)
        return sock

    async def serve(self, handle_signals: bool = True) -> None:
        """Start components, then serve until stopped, then close everything.

        With ``handle_signals`` SIGINT/SIGTERM stop the server; ``pillion run`` passes False and
        calls :meth:`request_stop` itself once the app has gone.
        """
        from runtime.http.app import create_app

        resources = self.load_resources()
        self.tracer = create_tracer(self.options.app_id, __version__, self.configuration.tracing)
        sock = self.bind()
        sockets = [sock]
        api_worker = self.api_worker
        server = _Server(
            uvicorn.Config(
                create_app(self),
                log_config=None,
                access_log=False,
                lifespan="off",
                http=protocol_class(self.options.connection_limits),
                ws="none",  # nothing in the API is a WebSocket
                timeout_graceful_shutdown=5,
                server_header=False,
                proxy_headers=False,
            ),
            self.options.drain_timeout,
        )
        self._server = server
        try:
            if not api_worker:
                await self._start_metrics_server()
            await self.start_components(resources)
            if not self.options.resources_paths and not api_worker:
                options = self.options
                await asyncio.to_thread(embedded.adopt_legacy_data, options.app_id, options.data_dir)
            await self._start_invocation()
            if not api_worker:
                await self._start_grpc()
            if self.options.resources_paths:
                from runtime.lifecycle.hot_reload import ResourceWatcher

                self._watcher = ResourceWatcher(
                    self.options.resources_paths,
                    self.options.app_id,
                    self.components,
                    self.declared_subscriptions,
                    self.subscriptions_reloaded,
                )
                self._watcher.start()
            # Deliveries, input bindings and app health checks are the primary's, not an API worker's.
            if self.options.app_port is not None and not api_worker:
                if self.options.app_health is not None:
                    self._start_app_health()
                self.spawn(self._wait_for_app_port())
            elif self.pubsub.has_brokers and not api_worker:
                log.info("no --app-port: pub/sub subscriptions are not started")
            if self.options.workers > 1:
                sockets.append(await self._start_workers(sock))
            log.info(
                "pillion %s serving app %r on http://%s:%d%s",
                __version__,
                self.options.app_id,
                self.options.host,
                sock.getsockname()[1],
                f" ({self.options.workers} processes)" if self.options.workers > 1 else "",
            )
            if not api_worker:
                self._announce()
            with server.stop_on_signals() if handle_signals else contextlib.nullcontext():
                await server.serve(sockets=sockets)
        finally:
            if handle_signals:
                exit_after(self.options.drain_timeout + STOP_SLACK, "stopping began")
            if self.workers is not None:
                await self.workers.stop(self.options.drain_timeout)
            if self.grpc is not None:
                await self.grpc.stop(self.options.drain_timeout)
            await self.stop_components()
            for opened in sockets:
                opened.close()
            await self._stop_observability()
            log.info("pillion stopped")
        if self._fatal is not None:
            raise StartupError(self._fatal)

    @property
    def api_worker(self) -> bool:
        """Whether this process is an extra API worker of --workers N (not the primary)."""
        return self.options.primary_port is not None

    async def _start_workers(self, sock: socket.socket) -> socket.socket:
        """Start the other processes of --workers N; the private socket they reach this one on."""
        from runtime.lifecycle.workers import ApiWorkers

        local = [
            f"{c.resource.name} ({c.resource.type})" for c in self.components.components if _process_local(c)
        ]
        if local:
            raise StartupError(
                f"--workers {self.options.workers}: {', '.join(local)} cannot be shared by several "
                "processes (its data lives in one); use a store or broker outside the process "
                "(SQLite, Redis, PostgreSQL, ...) or --workers 1"
            )
        private = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        private.bind(("127.0.0.1", 0))
        private.listen(128)
        private.setblocking(False)
        self.workers = ApiWorkers(self.options, sock.getsockname()[1], private.getsockname()[1])
        await self.workers.start()
        return private

    async def _start_grpc(self) -> None:
        """The gRPC API, before the app starts. A port given with --dapr-grpc-port must be had;
        the default one (50001) is best effort, so several sidecars can run side by side."""
        from runtime.grpc.server import DEFAULT_PORT, GrpcServer

        options = self.options
        server = GrpcServer(self, DEFAULT_PORT if options.grpc_port is None else options.grpc_port)
        try:
            await server.start()
        except OSError as exc:
            problem = f"cannot listen on {options.host}:{server.port} for the gRPC API: {exc}"
            if options.grpc_port is not None:
                raise StartupError(problem) from None
            log.warning("%s; the gRPC API is not served (pass --dapr-grpc-port to choose a port)", problem)
            return
        self.grpc = server
        log.info("gRPC API on %s:%d", options.host, server.port)

    # --- observability -------------------------------------------------------------------------

    def _in_flight(self) -> dict[tuple[str, str], int]:
        return self.pubsub.in_flight()  # the block is replaced when components start

    def _app_pid(self) -> int | None:
        # `pillion run` sets it, and so do launchers that PUT it as `dapr run` does.
        value = self.extended.get("appPID", "")
        return int(value) if value.isdigit() else None

    async def _start_metrics_server(self) -> None:
        """Serve /metrics on loopback; a port in use costs the metrics, never the sidecar."""
        if not self.options.enable_metrics:
            return
        server = MetricsServer(self.metrics, "127.0.0.1", self.options.metrics_port)
        try:
            await server.start()
        except OSError as exc:
            log.warning(
                "metrics are not served: cannot listen on 127.0.0.1:%d: %s",
                self.options.metrics_port,
                exc.strerror or exc,
            )
            return
        self._metrics_server = server
        log.info("metrics on http://127.0.0.1:%d/metrics", server.port)

    def _announce(self) -> None:
        """Make this sidecar visible to `pillion status` while it serves."""
        entry = Registration(
            app_id=self.options.app_id,
            pid=os.getpid(),
            host=self.options.host,
            http_port=self.options.http_port,
            metrics_port=self._metrics_server.port if self._metrics_server else None,
            started=time.time(),
            version=__version__,
        )
        try:
            self._registration = register(entry)
        except OSError as exc:
            log.warning("pillion status will not list this sidecar: %s", exc)

    async def _stop_observability(self) -> None:
        if self.tracer.exporting:
            # Flushing the last spans is a blocking HTTP call in the SDK.
            await asyncio.to_thread(self.tracer.close)
        if self._registration is not None:
            unregister(self._registration)
            self._registration = None
        if self._metrics_server is not None:
            await self._metrics_server.close()
            self._metrics_server = None

    @property
    def serving(self) -> bool:
        return self._server is not None and self._server.started

    def request_stop(self) -> None:
        """Stop serving: in-flight requests finish, then components close."""
        if self._server is not None:
            self._server.should_exit = True


class _Server(uvicorn.Server):
    """uvicorn's server without its signal re-raise: Pillion closes its components after the
    server stops, and re-raising SIGTERM would kill the process before SQLite is checkpointed."""

    def __init__(self, config: uvicorn.Config, drain_timeout: float) -> None:
        super().__init__(config)
        self.drain_timeout = drain_timeout

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    @contextlib.contextmanager
    def stop_on_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        log.info("received %s, shutting down", name)
        if self.should_exit:
            self.force_exit = True
        else:
            exit_after(self.drain_timeout + STOP_SLACK, name)
        self.should_exit = True


def _process_local(component: LoadedComponent) -> bool:
    return bool(getattr(component.instance, "process_local", False))

"""Service invocation's parts in one sidecar: certificate, internal port, name resolution, block.

Started after the components, stopped before them; the registration is withdrawn first so no
caller is sent here while the sidecar stops.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from components import registry
from components.base import ComponentContext
from components.metadata import MetadataError
from components.nameresolution.base import Instance, NameResolver
from runtime.invocation.calls import InvocationBlock, host_ip
from runtime.invocation.mtls import (
    CertificateAuthority,
    CertificateError,
    Identity,
    WorkloadCertificate,
    default_ca_dir,
    pillion_home,
)
from runtime.invocation.peer import AppForwarder, PeerClient, PeerServer
from runtime.resources.resiliency import Resiliency

if TYPE_CHECKING:
    from runtime.lifecycle.sidecar import Sidecar

log = logging.getLogger("pillion.invoke")
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass
class InvocationOptions:
    # daprd's --dapr-internal-grpc-port: where other sidecars call this one (0: a free port).
    internal_port: int = 0
    internal_host: str = "127.0.0.1"
    # daprd's --enable-mtls; off is only allowed on loopback.
    enable_mtls: bool = True
    ca_dir: Path | None = None
    # Life of this sidecar's certificate; it is renewed at two thirds of it.
    cert_ttl: float = 3600.0
    app_protocol: str = "http"


class InvocationSetupError(Exception):
    """Invocation cannot start; the message is one line for the user."""


def _name_resolver(sidecar: Sidecar) -> tuple[str, NameResolver]:
    spec = dict(sidecar.configuration.name_resolution)
    component = str(spec.get("component") or "").lower().removeprefix("nameresolution.")
    configuration = spec.get("configuration") or {}
    if not isinstance(configuration, dict):
        raise InvocationSetupError("spec.nameResolution.configuration must be a mapping")
    if not component:
        component = "kubernetes" if os.environ.get("KUBERNETES_SERVICE_HOST") else "sqlite"
        if component == "sqlite" and not configuration:
            configuration = {"connectionString": str(pillion_home() / "nameresolution.db")}
    type_name = f"nameresolution.{component}"
    cls = registry.component_class(type_name)
    if cls is None:
        known = ", ".join(t for t in registry.known_types() if t.startswith("nameresolution."))
        raise InvocationSetupError(f"name resolution {component!r} is not known (known: {known})")
    raw = {
        str(k): v if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)
        for k, v in configuration.items()
    }
    options = sidecar.options
    context = ComponentContext(type_name, options.app_id, options.resolved_data_dir, Path.cwd())
    try:
        resolver: NameResolver = cls(cls.schema.parse(raw), context)
    except MetadataError as exc:
        raise InvocationSetupError(f"spec.nameResolution ({type_name}): {exc}") from None
    return type_name, resolver


class ServiceInvocation:
    def __init__(self, sidecar: Sidecar, options: InvocationOptions) -> None:
        self.sidecar = sidecar
        self.options = options
        self.namespace = os.environ.get("NAMESPACE", "")
        # The caller's own token is not passed on when this sidecar checks tokens (as daprd).
        self.checks_token = bool(sidecar.options.api_token)
        self.certificate: WorkloadCertificate | None = None
        self.resolver_type = ""
        self.resolver: NameResolver | None = None
        self.server: PeerServer | None = None
        self.client: PeerClient | None = None
        self.app: AppForwarder | None = None
        self.resiliency: Resiliency | None = None
        self._block: InvocationBlock | None = None

    @property
    def block(self) -> InvocationBlock:
        assert self._block is not None
        return self._block

    def _start_certificate(self) -> None:
        options = self.options
        if not options.enable_mtls:
            if options.internal_host not in LOOPBACK:
                raise InvocationSetupError(
                    f"mTLS is off (--enable-mtls=false): the internal port may only listen on loopback, "
                    f"not {options.internal_host}"
                )
            log.warning("mTLS between sidecars is off: calls from other sidecars are not authenticated")
            return
        try:
            ca = CertificateAuthority.load_or_create(options.ca_dir or default_ca_dir())
        except CertificateError as exc:
            raise InvocationSetupError(str(exc)) from None
        access = self.sidecar.configuration.access_control
        trust_domain = access.trust_domain if access is not None else ca.trust_domain
        identity = Identity(trust_domain, self.namespace or "default", self.sidecar.options.app_id)
        self.certificate = WorkloadCertificate(ca, identity, options.cert_ttl)
        self.certificate.start()

    async def start(self) -> None:
        sidecar_options = self.sidecar.options
        self._start_certificate()
        ssl_server = self.certificate.server_context if self.certificate else None
        ssl_client = self.certificate.client_context if self.certificate else None
        scheme = "https" if self.options.app_protocol in ("https", "grpcs") else "http"
        self.app = AppForwarder(sidecar_options.app_channel_address, sidecar_options.app_port, scheme)
        # The extra processes of --workers call out only: the primary takes calls from other
        # sidecars and is the one registered.
        calls_in = sidecar_options.primary_port is None
        port = 0
        if calls_in:
            self.server = PeerServer(
                sidecar_options.app_id,
                self.namespace,
                self.app,
                self.sidecar.configuration.access_control,
                ssl_server,
            )
            try:
                port = await self.server.start(self.options.internal_host, self.options.internal_port)
            except OSError as exc:
                raise InvocationSetupError(
                    f"cannot listen on {self.options.internal_host}:{self.options.internal_port} "
                    f"(internal port): {exc.strerror}"
                ) from None
        self.resolver_type, resolver = _name_resolver(self.sidecar)
        try:
            await resolver.init()
            if calls_in:
                await resolver.register(
                    Instance(
                        sidecar_options.app_id,
                        self.namespace,
                        self._advertised_host(),
                        port,
                        sidecar_options.http_port,
                        sidecar_options.app_port,
                    )
                )
        except Exception as exc:
            raise InvocationSetupError(f"name resolution {self.resolver_type}: {exc}") from None
        self.resolver = resolver
        self.client = PeerClient(ssl_client)
        self.resiliency = self.sidecar.resiliency
        self._block = InvocationBlock(
            sidecar_options.app_id,
            self.namespace,
            resolver,
            self.client,
            self.app,
            self.resiliency,
            self._advertised_host(),
        )
        if not calls_in:
            return
        log.info(
            "service invocation: internal port %s:%d (%s), name resolution %s",
            self.options.internal_host,
            port,
            "mTLS" if self.certificate else "plain HTTP",
            self.resolver_type,
        )

    def _advertised_host(self) -> str:
        """What other sidecars dial: DAPR_HOST_IP, else the listen address, else the host's IP."""
        explicit = os.environ.get("DAPR_HOST_IP")
        if explicit:
            return explicit
        host = self.options.internal_host
        if host not in ("0.0.0.0", "::", ""):
            return host
        return host_ip()

    @property
    def internal_port(self) -> int:
        return self.server.port if self.server is not None else 0

    async def close(self) -> None:
        if self.resolver is not None:
            try:
                await self.resolver.close()
            except Exception as exc:
                log.warning("withdrawing the name-resolution entry failed: %s", exc)
        if self.server is not None:
            await self.server.close()
        for closer in (self.client, self.app):
            if closer is not None:
                await closer.aclose()
        if self.certificate is not None:
            await self.certificate.close()

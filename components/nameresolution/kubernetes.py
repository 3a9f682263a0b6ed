"""``nameresolution.kubernetes``: the cluster's DNS names the sidecars of an app id.

Each app id has a headless Service ``<app id>-dapr`` selecting its pods (deploy/kubernetes has one);
its name resolves to every ready pod's IP. Nothing is registered: Kubernetes does it.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, ClassVar

from components.base import ComponentContext
from components.metadata import MetadataField, MetadataSchema
from components.nameresolution.base import Instance


class KubernetesNameResolver:
    schema: ClassVar[MetadataSchema] = MetadataSchema(
        (
            MetadataField("clusterDomain", default="cluster.local", description="The cluster's DNS domain."),
            MetadataField(
                "template",
                default="",
                description="Name to look up instead of the default, with {{.ID}}, {{.Namespace}} and "
                "{{.Port}} replaced (a host:port, or a host that gets the internal port).",
            ),
        )
    )

    def __init__(self, metadata: dict[str, Any], context: ComponentContext) -> None:
        self.cluster_domain = str(metadata["clusterDomain"])
        self.template = str(metadata["template"])
        self.port = 0

    async def init(self) -> None:
        return None

    async def register(self, instance: Instance) -> None:
        # Every pod listens on the same internal port; callers reuse their own.
        self.port = instance.internal_port

    def name(self, app_id: str, namespace: str) -> tuple[str, int]:
        namespace = namespace or "default"
        if not self.template:
            return f"{app_id}-dapr.{namespace}.svc.{self.cluster_domain}", self.port
        text = (
            self.template.replace("{{.ID}}", app_id)
            .replace("{{.Namespace}}", namespace)
            .replace("{{.Port}}", str(self.port))
        )
        host, sep, port = text.rpartition(":")
        if sep and port.isdigit():
            return host, int(port)
        return text, self.port

    async def resolve(self, app_id: str, namespace: str) -> list[str]:
        host, port = self.name(app_id, namespace)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except socket.gaierror:
            return []
        addresses = []
        for family, *_, sockaddr in infos:
            ip = str(sockaddr[0])
            addresses.append(f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}")
        return sorted(set(addresses))

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

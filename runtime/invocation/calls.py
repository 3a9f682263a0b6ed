"""Service invocation: which sidecar serves an app id, what the call carries, retries and errors.

The HTTP API hands over a :class:`Call` whose body is still a stream; the reply's body is a stream
too, so a large body never sits in memory. A remote call goes to one of the target's sidecars
(chosen round-robin among the live addresses name resolution gives) through the peer transport;
a call to this sidecar's own app goes straight to the app. Reference: docs/invocation.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from runtime.errors import APIError, direct_invoke_denied, direct_invoke_failed
from runtime.resources.resiliency import CircuitOpen

if TYPE_CHECKING:
    from components.nameresolution.base import NameResolver
    from runtime.resources.resiliency import Policy, Resiliency

log = logging.getLogger("pillion.invoke")

Headers = list[tuple[str, str]]
# Connection-level headers of one hop; never forwarded (RFC 9110 section 7.6.1, as Go's proxy).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "http2-settings",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-authenticate",
    }
)
_NOT_FORWARDED = HOP_BY_HOP | {"host", "dapr-app-id", "destination-app-id", "traceparent", "tracestate"}
_CALLER_HEADERS = frozenset({"dapr-caller-app-id", "dapr-callee-app-id", "dapr-caller-namespace"})
# Built-in retries between sidecars when no Resiliency policy names the target (as daprd).
BUILTIN_RETRIES = 3
BUILTIN_RETRY_INTERVAL = 1.0
# An address that refused a connection is tried last for this long.
_DOWN_FOR = 5.0
# How long a name-resolution answer is reused; a failed address drops it at once.
_RESOLVE_TTL = 1.0
_BAD_METHOD = re.compile(r"[#?\x00-\x1f\x7f]")
# Bodies up to this size (with a Content-Length) are passed on whole: one write instead of a
# stream; larger or chunked ones stream.
WHOLE_BODY_LIMIT = 64 * 1024


class Unavailable(Exception):
    """The target sidecar could not be reached; nothing was sent, so the call can go elsewhere."""


class PeerRefused(Exception):
    """The target sidecar answered with an error of its own (not the app's answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class Call:
    verb: str
    method: str  # normalized, without the leading slash
    query: str  # raw, without "?"
    headers: Headers
    # A factory, so a body that was never read can be offered to another sidecar.
    body: Callable[[], AsyncIterator[bytes]] | None = None
    buffered: bytes | None = None

    @property
    def target(self) -> str:
        return "/" + self.method + ("?" + self.query if self.query else "")

    def payload(self) -> AsyncIterator[bytes] | bytes | None:
        if self.buffered is not None:
            return self.buffered
        return self.body() if self.body is not None else None


async def _nothing() -> None:
    return None


@dataclass(slots=True)
class Reply:
    status: int
    headers: Headers
    body: AsyncIterator[bytes]
    release: Callable[[], Awaitable[None]] = field(default=_nothing)
    # The whole body when it was small enough to read at once (then ``body`` yields just it).
    content: bytes | None = None

    async def drain(self) -> None:
        async for _ in self.body:
            pass
        await self.release()


class Transport(Protocol):
    async def send(self, address: str, app_id: str, namespace: str, call: Call) -> Reply:
        """Call the sidecar at ``address``; ``Unavailable`` when it cannot be reached,
        ``PeerRefused`` when it answers with an error of its own."""
        ...


class LocalApp(Protocol):
    async def forward(self, call: Call) -> Reply:
        """Call this sidecar's app; ``PeerRefused`` when it cannot be."""
        ...


def invoke_error(app_id: str, detail: str, status: int = 500) -> APIError:
    if status == 403:
        return direct_invoke_denied(app_id, detail)
    return direct_invoke_failed(app_id, detail)


def split_app_id(target: str, own_namespace: str) -> tuple[str, str]:
    """``id`` is in the caller's namespace, ``id.ns`` in ``ns``; more dots are an error."""
    parts = target.split(".")
    if len(parts) == 1 and parts[0]:
        return parts[0], own_namespace
    if len(parts) == 2 and all(parts):
        return parts[0], parts[1]
    raise invoke_error(target, f"invalid app id {target}")


def normalize_method(app_id: str, method: str) -> str:
    """The method as the ACL and the app see it: ``..`` resolved, control characters refused."""
    if _BAD_METHOD.search(method):
        raise invoke_error(app_id, f"rpc error: code = InvalidArgument desc = invalid method: {method!r}")
    if "." not in method and "//" not in method:
        return method.lstrip("/")
    cleaned = posixpath.normpath("/" + method).lstrip("/")
    return "" if cleaned == "." else cleaned


def forwarded_request_headers(raw: list[tuple[bytes, bytes]], drop_token: bool) -> Headers:
    """The caller's headers minus hop-by-hop ones, binary ones and those the sidecar sets itself."""
    named_in_connection: set[str] = set()
    for name, value in raw:
        if name.lower() == b"connection":
            named_in_connection.update(v.strip().lower() for v in value.decode("latin-1").split(","))
    kept: Headers = []
    for raw_name, raw_value in raw:
        key = raw_name.decode("latin-1").lower()
        if (
            key in _NOT_FORWARDED
            or key in named_in_connection
            or key in _CALLER_HEADERS
            or key.endswith("-bin")
            or (drop_token and key == "dapr-api-token")
        ):
            continue
        if key.startswith("grpc-"):
            key = "dapr-" + key
        kept.append((key, raw_value.decode("latin-1")))
    return kept


def header(headers: Headers, name: str) -> str | None:
    """The first value of ``name`` (lower case) in ``headers``, whatever their case."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def forwarded_response_headers(raw: Headers) -> Headers:
    return [(n, v) for n, v in raw if n.lower() not in HOP_BY_HOP]


def host_ip() -> str:
    """The address other hosts would see this one by (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("192.0.2.1", 9))  # TEST-NET-1: routing decides, nothing leaves
            return str(sock.getsockname()[0])
    except OSError:
        return "127.0.0.1"


class Balancer:
    """Live addresses per app id, handed out round-robin; an address that refused a connection
    goes to the back of the line for a few seconds."""

    def __init__(self, resolver: NameResolver) -> None:
        self.resolver = resolver
        self._cache: dict[tuple[str, str], tuple[float, list[str]]] = {}
        self._turn: dict[tuple[str, str], int] = {}
        self._down: dict[str, float] = {}

    async def candidates(self, app_id: str, namespace: str) -> list[str]:
        key = (app_id, namespace)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is None or cached[0] < now:
            addresses = await self.resolver.resolve(app_id, namespace)
            cached = (now + _RESOLVE_TTL, addresses)
            self._cache[key] = cached
        addresses = cached[1]
        if not addresses:
            return []
        turn = self._turn.get(key, 0)
        self._turn[key] = turn + 1
        start = turn % len(addresses)
        ordered = addresses[start:] + addresses[:start]
        # Healthy ones first, in turn; the recently failed after them, oldest failure first.
        healthy = [a for a in ordered if self._down.get(a, 0.0) < now]
        failed = sorted((a for a in ordered if self._down.get(a, 0.0) >= now), key=self._down.__getitem__)
        return healthy + failed

    def failed(self, app_id: str, namespace: str, address: str) -> None:
        self._down[address] = time.monotonic() + _DOWN_FOR
        self._cache.pop((app_id, namespace), None)


class InvocationBlock:
    def __init__(
        self,
        app_id: str,
        namespace: str,
        resolver: NameResolver,
        transport: Transport,
        local: LocalApp,
        resiliency: Resiliency | None = None,
        host: str = "",
    ) -> None:
        self.app_id = app_id
        self.namespace = namespace
        self.balancer = Balancer(resolver)
        self.transport = transport
        self.local = local
        self.resiliency = resiliency
        ip = host or host_ip()
        hostname = socket.gethostname()
        # Added to every remote call, as daprd adds them (appended to what the caller sent).
        self._forwarded = [
            ("x-forwarded-for", ip),
            ("x-forwarded-host", hostname),
            ("forwarded", f"for={ip};by={ip};host={hostname}"),
        ]
        self._caller_namespace = os.environ.get("NAMESPACE", "")

    def caller_headers(self, callee: str, remote: bool) -> Headers:
        added = [
            ("dapr-caller-app-id", self.app_id),
            ("dapr-callee-app-id", callee),
            ("dapr-caller-namespace", self._caller_namespace),
        ]
        return added + self._forwarded if remote else added

    async def invoke(self, target: str, call: Call) -> Reply:
        app_id, namespace = split_app_id(target, self.namespace)
        remote = not (app_id == self.app_id and namespace == self.namespace)
        call.headers.extend(self.caller_headers(app_id, remote))
        policy = self.resiliency.for_app(target) if self.resiliency is not None else None
        if policy is not None:
            return await self._with_policy(target, app_id, namespace, remote, call, policy)
        try:
            if not remote:
                return await self.local.forward(call)
            return await self._remote_builtin(app_id, namespace, call)
        except PeerRefused as exc:
            raise invoke_error(target, exc.message, exc.status) from None

    async def _remote_builtin(self, app_id: str, namespace: str, call: Call) -> Reply:
        """daprd's built-in policy: only an unreachable sidecar is retried, 3 times a second apart
        (at once when another instance is there to try)."""
        last = ""
        tried: set[str] = set()
        for attempt in range(BUILTIN_RETRIES + 1):
            addresses = await self.balancer.candidates(app_id, namespace)
            if not addresses:
                raise invoke_error(app_id, "no host found with the given ID")
            address = next((a for a in addresses if a not in tried), None)
            if address is None:
                tried.clear()
                address = addresses[0]
                await asyncio.sleep(BUILTIN_RETRY_INTERVAL)
            tried.add(address)
            try:
                return await self.transport.send(address, app_id, namespace, call)
            except Unavailable as exc:
                last = str(exc)
                log.debug("invoke %s: %s unavailable (try %d): %s", app_id, address, attempt + 1, exc)
                self.balancer.failed(app_id, namespace, address)
        raise invoke_error(
            app_id,
            f"failed to invoke target {app_id} after {BUILTIN_RETRIES} retries. "
            f"Error: rpc error: code = Unavailable desc = {last}",
        )

    async def _once(self, app_id: str, namespace: str, remote: bool, call: Call) -> Reply:
        if not remote:
            return await self.local.forward(call)
        addresses = await self.balancer.candidates(app_id, namespace)
        if not addresses:
            raise invoke_error(app_id, "no host found with the given ID")
        for address in addresses:
            try:
                return await self.transport.send(address, app_id, namespace, call)
            except Unavailable:
                self.balancer.failed(app_id, namespace, address)
        raise PeerRefused(500, f"rpc error: code = Unavailable desc = no instance of {app_id} answered")

    async def _with_policy(
        self, target: str, app_id: str, namespace: str, remote: bool, call: Call, policy: Policy
    ) -> Reply:
        """A Resiliency app target: its timeout, retries and breaker replace the built-in retries;
        app answers outside 200-399 count as failures too."""
        if policy.retries and call.body is not None and call.buffered is None:
            # Retries need the body again: read it once (the body limit already applies).
            call.buffered = b"".join([chunk async for chunk in call.body()])
        try:
            return await policy.run(
                lambda: self._once(app_id, namespace, remote, call), _failed_status, Reply.drain
            )
        except PeerRefused as exc:
            raise invoke_error(target, exc.message, exc.status) from None
        except TimeoutError:
            raise invoke_error(target, "context deadline exceeded") from None
        except CircuitOpen as exc:
            raise invoke_error(target, str(exc)) from None


def _failed_status(reply: Reply) -> int | None:
    """An app's answer outside 200-399 is a failure for a Resiliency policy (its retries and breaker)."""
    return None if 200 <= reply.status < 400 else reply.status

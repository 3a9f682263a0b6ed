"""The hop between sidecars, and the call from a sidecar to its own app.

Pillion's sidecars speak HTTP/1.1 to each other on the internal port (over mutual TLS unless it is
explicitly turned off): the request is the app's request (verb, ``/<method>?<query>``, headers,
body streamed), the answer the app's answer. An error of the target sidecar itself (access denied,
no app, app unreachable) is marked with the ``pillion-invoke-error`` header so the caller's sidecar
can tell it from an answer of the app. The internal port is an aiohttp server; the calls out, to
other sidecars and to the app, go over the kept-alive connections of ``runtime.invocation.http1``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

from runtime.invocation.calls import (
    HOP_BY_HOP,
    WHOLE_BODY_LIMIT,
    Call,
    Headers,
    PeerRefused,
    Reply,
    Unavailable,
    forwarded_response_headers,
    header,
)
from runtime.invocation.http1 import Answer, AnswerError, ConnectError, ConnectionPool
from runtime.invocation.mtls import Identity, peer_identity

if TYPE_CHECKING:
    from runtime.invocation.acl import AccessControl

log = logging.getLogger("pillion.peer")
ERROR_HEADER = "pillion-invoke-error"
# Request headers that describe the hop, not the app's request.
_HOP_REQUEST = HOP_BY_HOP | {"host"}
_CHUNK = 64 * 1024
_SHUTDOWN_GRACE = 2.0
# The internal port's server (aiohttp) keeps an idle connection 75 s; a TLS handshake is dear.
_PEER_IDLE_LIMIT = 30.0


def _reply(answer: Answer) -> Reply:
    headers = forwarded_response_headers(answer.headers)
    if answer.content is not None:
        return Reply(answer.status, headers, _once(answer.content), content=answer.content)
    return Reply(answer.status, headers, answer.body, answer.release)


async def _once(content: bytes) -> AsyncIterator[bytes]:
    yield content


class PeerClient:
    """Calls other sidecars over kept-alive connections, with a client certificate when mTLS is on."""

    def __init__(self, ssl_context: ssl.SSLContext | None) -> None:
        self._ssl = ssl_context
        self._pools: dict[str, ConnectionPool] = {}

    def _pool(self, address: str) -> ConnectionPool:
        pool = self._pools.get(address)
        if pool is None:
            host, _, port = address.rpartition(":")
            pool = self._pools[address] = ConnectionPool(
                host.strip("[]"), int(port), self._ssl, idle_limit=_PEER_IDLE_LIMIT
            )
        return pool

    async def send(self, address: str, app_id: str, namespace: str, call: Call) -> Reply:
        check = self._identity_check(app_id, address) if self._ssl is not None else None
        try:
            answer = await self._pool(address).request(
                call.verb, call.target, call.headers, call.payload(), WHOLE_BODY_LIMIT, check
            )
        except ConnectError as exc:
            raise Unavailable(str(exc)) from None
        except AnswerError as exc:
            raise PeerRefused(500, f"rpc error: code = Unavailable desc = {exc}") from None
        refused = header(answer.headers, ERROR_HEADER)
        if refused is not None:
            content = answer.content
            if content is None:
                content = b"".join([chunk async for chunk in answer.body])
            message = content.decode("utf-8", "replace")
            raise PeerRefused(int(refused) if refused.isdigit() else 500, message)
        return _reply(answer)

    @staticmethod
    def _identity_check(app_id: str, address: str) -> Callable[[asyncio.Transport], None]:
        """The answering sidecar must be one of ``app_id``: a stale registration may point at a
        port another app now holds."""

        def check(transport: asyncio.Transport) -> None:
            identity = peer_identity(transport.get_extra_info("ssl_object"))
            if identity is None or identity.app_id != app_id:
                who = identity.uri if identity is not None else "a peer without a SPIFFE id"
                raise Unavailable(f"{address} is {who}, not a sidecar of {app_id}")

        return check

    async def aclose(self) -> None:
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.close()


class AppForwarder:
    """Calls this sidecar's own app with the caller's request, streaming both ways."""

    def __init__(self, address: str | None, port: int | None, scheme: str = "http") -> None:
        self.port = port
        self._token = os.environ.get("APP_API_TOKEN", "")
        self._pool: ConnectionPool | None = None
        if port is not None:
            # daprd does not verify an https app's certificate: it runs beside the sidecar.
            context = None
            if scheme == "https":
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._pool = ConnectionPool(address or "127.0.0.1", port, context)

    async def forward(self, call: Call) -> Reply:
        if self._pool is None:
            raise PeerRefused(500, "rpc error: code = Internal desc = app channel is not initialized")
        headers = call.headers
        if self._token:
            headers = [(n, v) for n, v in headers if n.lower() != "dapr-api-token"]
            headers.append(("dapr-api-token", self._token))
        try:
            answer = await self._pool.request(
                call.verb, call.target, headers, call.payload(), WHOLE_BODY_LIMIT
            )
        except (ConnectError, AnswerError) as exc:
            raise PeerRefused(
                500, f"rpc error: code = Internal desc = error invoking app channel: {exc}"
            ) from None
        return _reply(answer)

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.close()


class PeerServer:
    """The internal port: other sidecars' calls for this app, checked against access control."""

    def __init__(
        self,
        app_id: str,
        namespace: str,
        app: AppForwarder,
        access: AccessControl | None,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.app_id = app_id
        self.namespace = namespace
        self.app = app
        self.access = access
        self.ssl_context = ssl_context
        self._runner: web.ServerRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        server = web.Server(self._handle, access_log=None)
        # Calls in flight get a moment to finish at shutdown; idle kept-open connections none.
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=_SHUTDOWN_GRACE)
        await self._runner.setup()
        # A socket of our own, so the port picked for port 0 is known.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        self.port = int(sock.getsockname()[1])
        site = web.SockSite(self._runner, sock, ssl_context=self.ssl_context, backlog=1024)
        await site.start()
        return self.port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @staticmethod
    def _refuse(status: int, message: str) -> web.Response:
        return web.Response(status=status, text=message, headers={ERROR_HEADER: str(status)})

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        identity: Identity | None = None
        if self.ssl_context is not None:
            identity = peer_identity(
                request.transport.get_extra_info("ssl_object") if request.transport else None
            )
            if identity is None:
                return self._refuse(403, "rpc error: code = Unauthenticated desc = no SPIFFE identity")
        callee = request.headers.get("dapr-callee-app-id", "")
        if callee != self.app_id:
            return self._refuse(
                500, f"rpc error: code = NotFound desc = this sidecar serves {self.app_id}, not {callee}"
            )
        raw_path = request.raw_path
        path, _, query = raw_path.partition("?")
        method = path.lstrip("/")
        if self.access is not None:
            denied = self.access.denied(identity, method, request.method)
            if denied is not None:
                return self._refuse(403, denied)
        headers: Headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_REQUEST]
        call = Call(request.method, method, query, headers)
        if request.body_exists:
            length = request.content_length
            if length is not None and length <= WHOLE_BODY_LIMIT:
                call.buffered = await request.read()
            else:
                call.body = lambda: _iter_request(request)
        try:
            reply = await self.app.forward(call)
        except PeerRefused as exc:
            return self._refuse(exc.status, exc.message)
        response: web.StreamResponse
        # A HEAD answer keeps the app's Content-Length, which web.Response would replace.
        whole = reply.content is not None and request.method != "HEAD"
        if whole:
            response = web.Response(status=reply.status, body=reply.content)
        else:
            response = web.StreamResponse(status=reply.status)
        for name, value in reply.headers:
            if not whole or name.lower() != "content-length":
                response.headers.add(name, value)
        if "Server" not in response.headers:
            response.headers["Server"] = SERVER_SOFTWARE  # the caller's sidecar drops this value
        if whole:
            return response
        try:
            await response.prepare(request)
            async for chunk in reply.body:
                await response.write(chunk)
            await response.write_eof()
        finally:
            await reply.release()
        return response


async def _iter_request(request: web.BaseRequest) -> AsyncIterator[bytes]:
    while chunk := await request.content.read(_CHUNK):
        yield chunk

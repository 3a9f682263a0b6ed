"""The hop between sidecars, and the call from a sidecar to its own app, both over aiohttp.

Pillion's sidecars speak HTTP/1.1 to each other on the internal port (over mutual TLS unless it is
explicitly turned off): the request is the app's request (verb, ``/<method>?<query>``, headers,
body streamed), the answer the app's answer. An error of the target sidecar itself (access denied,
no app, app unreachable) is marked with the ``pillion-invoke-error`` header so the caller's sidecar
can tell it from an answer of the app. Connections are pooled and kept open.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from yarl import URL

from runtime.invocation.calls import (
    HOP_BY_HOP,
    WHOLE_BODY_LIMIT,
    Call,
    Headers,
    PeerRefused,
    Reply,
    Unavailable,
    forwarded_response_headers,
)
from runtime.invocation.mtls import Identity, peer_identity

if TYPE_CHECKING:
    from runtime.invocation.acl import AccessControl

log = logging.getLogger("pillion.peer")
ERROR_HEADER = "pillion-invoke-error"
# Request headers that describe the hop, not the app's request.
_HOP_REQUEST = HOP_BY_HOP | {"host"}
# Keep-alive on the client side ends before the server's (75 s), so a pooled connection is never
# one the server is closing.
_CLIENT_KEEPALIVE = 30.0
# How long a sidecar or app may take to accept a connection.
_CONNECT_TIMEOUT = 5.0
_CHUNK = 64 * 1024
_SHUTDOWN_GRACE = 2.0
# Answers that never have a body (RFC 9110 section 6.4.1).
_NO_BODY = frozenset({*range(100, 200), 204, 304})


def _session(ssl_context: ssl.SSLContext | None) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=0, keepalive_timeout=_CLIENT_KEEPALIVE, ssl=ssl_context if ssl_context else False
        ),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=_CONNECT_TIMEOUT),
        # Bodies and headers pass through as they are: no decompression, no added headers, and
        # no cookie jar (a Set-Cookie is the app's answer to its caller, not to this sidecar).
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
    )


async def _stream(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.content.iter_any():
            yield chunk
    finally:
        response.release()


async def _once(content: bytes) -> AsyncIterator[bytes]:
    yield content


async def _reply(response: aiohttp.ClientResponse) -> Reply:
    headers = forwarded_response_headers([(k, v) for k, v in response.headers.items()])
    length = response.content_length
    if response.status in _NO_BODY or response.method == "HEAD":
        response.release()
        return Reply(response.status, headers, _once(b""), content=b"")
    if length is not None and length <= WHOLE_BODY_LIMIT:
        try:
            content = await response.read()
        finally:
            response.release()
        return Reply(response.status, headers, _once(content), content=content)

    async def release() -> None:
        response.release()

    return Reply(response.status, headers, _stream(response), release)


class PeerClient:
    """Calls other sidecars; one pooled session, keep-alive, client certificate when mTLS is on."""

    def __init__(self, ssl_context: ssl.SSLContext | None) -> None:
        self._ssl = ssl_context
        self._scheme = "https" if ssl_context is not None else "http"
        self._session: aiohttp.ClientSession | None = None

    async def send(self, address: str, app_id: str, namespace: str, call: Call) -> Reply:
        if self._session is None:
            self._session = _session(self._ssl)
        url = URL(f"{self._scheme}://{address}{call.target}", encoded=True)
        try:
            response = await self._session.request(
                call.verb, url, headers=call.headers, data=call.payload(), allow_redirects=False
            )
        except aiohttp.ClientConnectorError as exc:
            raise Unavailable(str(exc)) from None
        except aiohttp.ServerDisconnectedError as exc:
            raise PeerRefused(500, f"rpc error: code = Unavailable desc = {exc}") from None
        except aiohttp.ClientError as exc:
            raise PeerRefused(500, f"rpc error: code = Internal desc = {exc!r}") from None
        if self._ssl is not None:
            self._check_identity(response, app_id, address)
        refused = response.headers.get(ERROR_HEADER)
        if refused is not None:
            try:
                message = (await response.read()).decode("utf-8", "replace")
            finally:
                response.release()
            raise PeerRefused(int(refused) if refused.isdigit() else 500, message)
        return await _reply(response)

    @staticmethod
    def _check_identity(response: aiohttp.ClientResponse, app_id: str, address: str) -> None:
        """The answering sidecar must be one of ``app_id``: a stale registration may point at a
        port another app now holds."""
        # The connection may already be back in the pool (a small answer is read at once), but
        # the response keeps the protocol it was read from. aiohttp has no public accessor.
        protocol = getattr(response, "_protocol", None)
        transport = protocol.transport if protocol is not None else None
        identity = peer_identity(transport.get_extra_info("ssl_object") if transport is not None else None)
        if identity is None or identity.app_id != app_id:
            response.close()
            who = identity.uri if identity is not None else "a peer without a SPIFFE id"
            raise Unavailable(f"{address} is {who}, not a sidecar of {app_id}")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class AppForwarder:
    """Calls this sidecar's own app with the caller's request, streaming both ways."""

    def __init__(self, address: str | None, port: int | None, scheme: str = "http") -> None:
        self.port = port
        host = f"[{address}]" if address and ":" in address else address
        self._base = f"{scheme}://{host}:{port}"
        self._token = os.environ.get("APP_API_TOKEN", "")
        self._session: aiohttp.ClientSession | None = None
        # daprd does not verify an https app's certificate: it runs beside the sidecar.
        self._ssl: ssl.SSLContext | bool = False

    async def forward(self, call: Call) -> Reply:
        if self.port is None:
            raise PeerRefused(500, "rpc error: code = Internal desc = app channel is not initialized")
        if self._session is None:
            self._session = _session(None)
        headers = call.headers
        if self._token:
            headers = [(n, v) for n, v in headers if n.lower() != "dapr-api-token"]
            headers.append(("dapr-api-token", self._token))
        url = URL(self._base + call.target, encoded=True)
        try:
            response = await self._session.request(
                call.verb, url, headers=headers, data=call.payload(), allow_redirects=False, ssl=self._ssl
            )
        except aiohttp.ClientError as exc:
            raise PeerRefused(
                500, f"rpc error: code = Internal desc = error invoking app channel: {exc}"
            ) from None
        return await _reply(response)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


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

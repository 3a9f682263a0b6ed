"""``bindings.http``: an output binding that makes an HTTP request per operation.

Operations are HTTP methods (``create`` is POST); metadata ``path`` is appended to ``url``, and
every metadata key starting with a capital letter is sent as a header. The answer carries the body
and the metadata ``statusCode``, ``status`` and the response headers; a status outside 2xx is an
error unless ``errorIfNot2XX`` is false (for the component or the call).
"""

from __future__ import annotations

import http
import shutil
import ssl
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
from yarl import URL

from components.base import ComponentContext
from components.bindings.base import OUTPUT, BindingError, InvokeRequest, InvokeResponse
from components.bindings.http_util import canonical_header
from components.metadata import FieldType, MetadataError, MetadataField, MetadataSchema, parse_bool

_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
_SIZE_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1024, "mi": 1024**2, "gi": 1024**3}
_JSON = "application/json; charset=utf-8"


def _size(text: str) -> int:
    """A Kubernetes-style quantity (``100Mi``, ``2k``, ``512``) in bytes."""
    raw = text.strip()
    digits = raw.rstrip("KkMmGgi")
    unit = raw[len(digits) :].lower()
    if unit not in _SIZE_UNITS or not digits.lstrip("-").isdigit():
        raise MetadataError("maxResponseBodySize", f"{text!r} is not a size (use e.g. 100Mi, 64Ki, 1000)")
    return int(digits) * _SIZE_UNITS[unit]


def _pem(value: str, folder: Path, name: str) -> str:
    """A path to the PEM: the value itself when it names a file, else a private copy of the text."""
    if not value.lstrip().startswith("-----BEGIN"):
        return value
    path = folder / name
    path.touch(mode=0o600)
    path.write_text(value)
    return str(path)


class HTTPBinding:
    """Output binding calling an HTTP endpoint (operations are HTTP methods)."""

    schema: ClassVar[MetadataSchema] = MetadataSchema(
        (
            MetadataField("url", required=True, description="Base URL of the endpoint."),
            MetadataField(
                "responseTimeout",
                FieldType.DURATION,
                default=0.0,
                description="How long one call may take; 0 waits as long as it takes.",
            ),
            MetadataField(
                "maxResponseBodySize",
                default="100Mi",
                description="Most response bytes read (the rest is dropped); 0 or less: no limit.",
            ),
            MetadataField(
                "errorIfNot2XX",
                FieldType.BOOLEAN,
                default=True,
                description="A response status outside 2xx fails the call (the metadata is still returned).",
            ),
            MetadataField(
                "securityToken", default="", sensitive=True, description="Sent in `securityTokenHeader`."
            ),
            MetadataField("securityTokenHeader", default="", description="Header carrying `securityToken`."),
            MetadataField("mtlsRootCA", default="", description="PEM text or file of the CA to trust."),
            MetadataField(
                "mtlsClientCert", default="", description="PEM text or file of a client certificate."
            ),
            MetadataField(
                "mtlsClientKey",
                default="",
                sensitive=True,
                description="PEM text or file of its private key.",
            ),
            MetadataField(
                "mtlsRenegotiation",
                default="RenegotiateNever",
                description="Accepted for compatibility; Python's TLS never renegotiates.",
            ),
        )
    )
    directions: ClassVar[frozenset[str]] = frozenset({OUTPUT})
    operations: ClassVar[tuple[str, ...]] = (
        "create",
        "get",
        "head",
        "post",
        "put",
        "patch",
        "delete",
        "options",
        "trace",
    )

    def __init__(self, metadata: dict[str, Any], context: ComponentContext) -> None:
        self._url: str = metadata["url"]
        if URL(self._url).scheme not in ("http", "https"):
            raise MetadataError("url", f"{self._url!r} is not an http:// or https:// URL")
        self._timeout: float = metadata["responseTimeout"]
        self._max_body = _size(str(metadata["maxResponseBodySize"]))
        self._error_if_not_2xx: bool = metadata["errorIfNot2XX"]
        self._token: tuple[str, str] | None = None
        if metadata["securityToken"] and metadata["securityTokenHeader"]:
            self._token = (metadata["securityTokenHeader"], metadata["securityToken"])
        self._ssl = self._tls(metadata)
        self._session: aiohttp.ClientSession | None = None

    @staticmethod
    def _tls(metadata: dict[str, Any]) -> ssl.SSLContext | None:
        root, cert, key = metadata["mtlsRootCA"], metadata["mtlsClientCert"], metadata["mtlsClientKey"]
        if not (root or cert or key):
            return None
        if bool(cert) != bool(key):
            raise MetadataError("mtlsClientCert", "mtlsClientCert and mtlsClientKey go together")
        context = ssl.create_default_context()
        try:
            if root:
                if root.lstrip().startswith("-----BEGIN"):
                    context.load_verify_locations(cadata=root)
                else:
                    context.load_verify_locations(cafile=root)
            if cert:
                # Python loads a client certificate only from files.
                folder = Path(tempfile.mkdtemp(prefix="pillion-http-tls-"))
                try:
                    context.load_cert_chain(_pem(cert, folder, "cert.pem"), _pem(key, folder, "key.pem"))
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
        except (ssl.SSLError, OSError) as exc:
            raise MetadataError(
                "mtlsRootCA" if not cert else "mtlsClientCert", f"cannot be used: {exc}"
            ) from None
        return context

    async def init(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ssl=self._ssl or True),
            skip_auto_headers=("User-Agent", "Content-Type"),
            auto_decompress=True,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def ping(self) -> None:
        return None  # the endpoint may well answer nothing on its base URL

    async def invoke(self, request: InvokeRequest) -> InvokeResponse:
        assert self._session is not None, "init() was not called"
        metadata = request.metadata
        url = self._url
        if metadata.get("path"):
            url = url.rstrip("/") + "/" + metadata["path"].lstrip("/")
        error_if_not_2xx = self._error_if_not_2xx
        if metadata.get("errorIfNot2XX"):
            try:
                error_if_not_2xx = parse_bool(metadata["errorIfNot2XX"])
            except ValueError:
                error_if_not_2xx = False  # Go's IsTruthy: anything unrecognised is false
        method = request.operation.upper()
        if method == "CREATE":
            method = "POST"
        body = request.data if method in _WITH_BODY else None
        headers: dict[str, str] = {}
        if body is not None and "Content-Type" not in metadata:
            headers["Content-Type"] = _JSON
        if "Accept" not in metadata:
            headers["Accept"] = _JSON
        if self._token is not None:
            headers[self._token[0]] = self._token[1]
        for key, value in metadata.items():
            if key[:1].isascii() and key[:1].isupper():
                headers[key] = value
        for key in ("traceparent", "tracestate", "baggage"):
            if metadata.get(key):
                headers[key] = metadata[key]
        timeout = aiohttp.ClientTimeout(total=self._timeout or None)
        try:
            async with self._session.request(
                method, URL(url, encoded=True), data=body, headers=headers, timeout=timeout
            ) as response:
                data = await _read_body(response, self._max_body)
                status = response.status
                answer: dict[str, str] = {}
                for name in response.headers:
                    key = canonical_header(name)
                    if key not in answer:
                        answer[key] = ", ".join(response.headers.getall(name))
        except TimeoutError:
            raise BindingError(f"{method} {url}: no answer within {self._timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise BindingError(f"{method} {url}: {exc}") from None
        answer["statusCode"] = str(status)
        answer["status"] = f"{status} {_reason(status)}".rstrip()
        result = InvokeResponse(data, answer)
        if error_if_not_2xx and status // 100 != 2:
            raise BindingError(f"received status code {status}", result)
        return result


async def _read_body(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, cut at ``limit`` bytes when the limit is positive."""
    if limit <= 0:
        return await response.read()
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0:
        chunk = await response.content.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""

"""Mutual TLS between sidecars: a local certificate authority and short-lived per-app certificates.

``pillion certs`` (or the first sidecar that finds none) makes a CA in ``<pillion home>/ca``. Every
sidecar then issues itself a certificate from it carrying its SPIFFE id
(``spiffe://<trust domain>/ns/<namespace>/<app id>``) and renews it at two thirds of its life. The
renewed chain is loaded into the same ``ssl.SSLContext`` objects, so the servers and the pooled
client connections pick it up on their next handshake without a restart. A peer whose certificate
does not chain to the same CA fails the handshake on both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import logging
import os
import ssl
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger("pillion.mtls")

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
DEFAULT_TRUST_DOMAIN = "public"
DEFAULT_CA_VALIDITY = datetime.timedelta(days=365)
# Clocks of two hosts may disagree a little; a certificate valid from "now" would be refused.
_CLOCK_SKEW = datetime.timedelta(minutes=5)


class CertificateError(Exception):
    """The CA cannot be read or made; the message is the line the user sees."""


def pillion_home() -> Path:
    """Machine-wide Pillion files (CA, name resolution); ``PILLION_HOME`` moves them."""
    return Path(os.environ.get("PILLION_HOME") or Path.home() / ".pillion")


def default_ca_dir() -> Path:
    return pillion_home() / "ca"


def spiffe_id(trust_domain: str, namespace: str, app_id: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/{app_id}"


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified peer, read from the URI SAN of its certificate."""

    trust_domain: str
    namespace: str
    app_id: str

    @property
    def uri(self) -> str:
        return spiffe_id(self.trust_domain, self.namespace, self.app_id)


def parse_spiffe(uri: str) -> Identity | None:
    if not uri.startswith("spiffe://"):
        return None
    parts = uri[len("spiffe://") :].split("/")
    if len(parts) != 4 or parts[1] != "ns" or not all(parts):
        return None
    return Identity(parts[0], parts[2], parts[3])


# A connection's peer certificate is fixed for its life (renegotiation is off, see
# WorkloadCertificate), so it is read once per connection rather than on every request over it.
_identities: weakref.WeakKeyDictionary[ssl.SSLObject | ssl.SSLSocket, Identity] = weakref.WeakKeyDictionary()


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> Identity | None:
    """The SPIFFE identity of a verified TLS peer (None without TLS or without a SPIFFE SAN)."""
    if ssl_object is None:
        return None
    known = _identities.get(ssl_object)
    if known is not None:
        return known
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    names: tuple[tuple[str, str], ...] = cert.get("subjectAltName", ())  # type: ignore[assignment]
    for kind, value in names:
        if kind == "URI":
            identity = parse_spiffe(str(value))
            if identity is not None:
                _identities[ssl_object] = identity
                return identity
    return None


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def create_ca(
    directory: Path,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    validity: datetime.timedelta = DEFAULT_CA_VALIDITY,
    overwrite: bool = False,
) -> Path:
    """Write ``ca.crt`` and ``ca.key`` (mode 0600) into ``directory``; returns the certificate path."""
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if cert_path.exists() and not overwrite:
        raise CertificateError(f"{cert_path} exists already (pass --force to replace it)")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"pillion CA {trust_domain}")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]), False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Each file appears whole (written aside, then renamed), the key first: a certificate whose
    # key is missing or half-written would be unusable.
    key_tmp = key_path.with_name(key_path.name + ".tmp")
    _write_private(key_tmp, key_pem)
    os.replace(key_tmp, key_path)
    cert_tmp = cert_path.with_name(cert_path.name + ".tmp")
    cert_tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(cert_tmp, cert_path)
    return cert_path


@dataclass
class CertificateAuthority:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path

    @property
    def trust_domain(self) -> str:
        try:
            san = self.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            return DEFAULT_TRUST_DOMAIN
        for uri in san.value.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.startswith("spiffe://"):
                return uri[len("spiffe://") :].strip("/") or DEFAULT_TRUST_DOMAIN
        return DEFAULT_TRUST_DOMAIN

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        cert_path, key_path = directory / CA_CERT, directory / CA_KEY
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except OSError as exc:
            raise CertificateError(f"cannot read the CA in {directory}: {exc.strerror}") from None
        except ValueError as exc:
            raise CertificateError(f"the CA in {directory} cannot be read: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertificateError(f"{key_path}: expected an EC private key")
        if cert.not_valid_after_utc <= _now():
            raise CertificateError(
                f"the CA certificate {cert_path} has expired; make a new one with pillion certs"
            )
        return cls(cert, key, cert_path)

    @classmethod
    def load_or_create(cls, directory: Path) -> CertificateAuthority:
        """The CA in ``directory``, made on first use so one machine needs no set-up.

        Sidecars started together would each make one: a lock file lets the first make it and
        the others wait and read it (a key from one CA with the certificate of another would
        fail every handshake).
        """
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            with (directory / ".lock").open("a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not (directory / CA_CERT).exists():
                    create_ca(directory)
                    log.info("created a local certificate authority in %s (see pillion certs)", directory)
                return cls.load(directory)
        except OSError as exc:
            raise CertificateError(f"cannot create a CA in {directory}: {exc.strerror}") from None

    def issue(self, identity: Identity, ttl: datetime.timedelta) -> tuple[bytes, bytes]:
        """A fresh key and a certificate for ``identity``, both PEM; usable as server and client."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        not_after = min(now + ttl, self.certificate.not_valid_after_utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.app_id)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]), True)
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem


class WorkloadCertificate:
    """This sidecar's certificate: issued at start, renewed in the background, loaded into the
    server and client TLS contexts in place."""

    def __init__(self, ca: CertificateAuthority, identity: Identity, ttl: float) -> None:
        self.ca = ca
        self.identity = identity
        self.ttl = ttl
        self.server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca.cert_path))
        self.server_context.verify_mode = ssl.CERT_REQUIRED
        self.client_context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca.cert_path))
        # Peers are addressed by IP and proven by their SPIFFE id, checked after the handshake.
        self.client_context.check_hostname = False
        for context in (self.server_context, self.client_context):
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            # No renegotiation (TLS 1.2 would allow it): a connection keeps the identity its
            # handshake proved, which peer_identity reads once.
            context.options |= ssl.OP_NO_RENEGOTIATION
        self.renewals = 0
        self._task: asyncio.Task[None] | None = None

    def _issue(self) -> tuple[bytes, bytes]:
        return self.ca.issue(self.identity, datetime.timedelta(seconds=self.ttl))

    def _install(self, cert_pem: bytes, key_pem: bytes) -> None:
        # load_cert_chain reads files only; they live just long enough to be read.
        with tempfile.TemporaryDirectory(prefix="pillion-cert-") as folder:
            cert_file, key_file = Path(folder) / "cert.pem", Path(folder) / "key.pem"
            cert_file.write_bytes(cert_pem)
            _write_private(key_file, key_pem)
            for context in (self.server_context, self.client_context):
                context.load_cert_chain(cert_file, key_file)
        self.renewals += 1

    def start(self) -> None:
        self._install(*self._issue())
        self._task = asyncio.create_task(self._renew_loop())

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ttl * 2 / 3)
            try:
                # Key generation and signing take a few milliseconds: off the event loop. The
                # contexts are only touched on the loop, where handshakes use them.
                self._install(*await asyncio.to_thread(self._issue))
                log.info("renewed the certificate of %s", self.identity.uri)
            except Exception as exc:
                log.error("renewing the certificate of %s failed: %s", self.identity.uri, exc)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

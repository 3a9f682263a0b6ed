"""``secretstores.local.encrypted``: a file of secrets encrypted at rest with AES-256-GCM.

The file is JSON (format described in docs/secrets.md)::

    {"format": "pillion-encrypted-secrets", "version": 1, "cipher": "AES-256-GCM",
     "keyId": "<16 hex>", "nonce": "<base64, 12 bytes>", "ciphertext": "<base64, data + 16-byte tag>"}

The plaintext is ``{"<secret>": {"<key>": "<value>", ...}, ...}``. The header fields before
``nonce`` are the additional authenticated data, so changing any of them, the nonce or one bit of
the ciphertext fails authentication. ``keyId`` (an HMAC of a fixed text under the key) tells a
wrong key apart from a damaged file without revealing the key. The key is 32 random bytes written
as 64 hex digits, in an environment variable or a file; ``pillion secrets`` manages the file.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from secrets import token_bytes
from typing import Any, ClassVar

from components.base import ComponentContext
from components.metadata import MetadataError, MetadataField, MetadataSchema
from components.secretstores.base import PreloadedSecretStore, SecretStoreFeature, local_path

log = logging.getLogger("pillion.secretstores.encrypted")

FORMAT = "pillion-encrypted-secrets"
VERSION = 1
CIPHER = "AES-256-GCM"
KEY_BYTES = 32
NONCE_BYTES = 12
DEFAULT_KEY_ENV = "PILLION_SECRETS_KEY"
_HEADER_FIELDS = ("format", "version", "cipher", "keyId")

Secrets = dict[str, dict[str, str]]


class EncryptedFileError(ValueError):
    """The file or key cannot be used; the message never holds a key or a secret value."""


def new_key() -> bytes:
    return token_bytes(KEY_BYTES)


def key_text(key: bytes) -> str:
    return key.hex()


def parse_key(text: str, source: str) -> bytes:
    """A key as written in a key file or variable: 64 hex digits, surrounding blanks ignored."""
    cleaned = text.strip()
    try:
        key = bytes.fromhex(cleaned)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise EncryptedFileError(
            f"the key in {source} is not 64 hex digits (a 256-bit key; `pillion secrets keygen` makes one)"
        )
    return key


def key_id(key: bytes) -> str:
    return hmac.new(key, b"pillion-encrypted-secrets key id", hashlib.sha256).hexdigest()[:16]


def _header_bytes(header: Mapping[str, Any]) -> bytes:
    return json.dumps({k: header[k] for k in _HEADER_FIELDS}, sort_keys=True, separators=(",", ":")).encode()


# cryptography is imported on use: `pillion serve` imports this module through the CLI, and a
# sidecar without an encrypted store should not load it.


def seal(secrets: Secrets, key: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    header: dict[str, Any] = {"format": FORMAT, "version": VERSION, "cipher": CIPHER, "keyId": key_id(key)}
    nonce = token_bytes(NONCE_BYTES)
    plaintext = json.dumps(secrets, sort_keys=True, separators=(",", ":")).encode()
    sealed = AESGCM(key).encrypt(nonce, plaintext, _header_bytes(header))
    document = {
        **header,
        "nonce": base64.b64encode(nonce).decode(),
        "ciphertext": base64.b64encode(sealed).decode(),
    }
    return (json.dumps(document, indent=2) + "\n").encode()


def _check_secrets(value: Any) -> Secrets:
    if not isinstance(value, dict) or not all(
        isinstance(secret, dict) and all(isinstance(v, str) for v in secret.values())
        for secret in value.values()
    ):
        raise ValueError("the decrypted content is not a map of secrets")
    return value


def unseal(data: bytes, key: bytes, where: str) -> Secrets:
    """Decrypt a sealed file; every failure is an EncryptedFileError naming ``where``."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        document = json.loads(data)
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        if document.get("version") != VERSION or document.get("cipher") != CIPHER:
            raise ValueError(
                f"unsupported version {document.get('version')!r} / cipher {document.get('cipher')!r}"
            )
        nonce = base64.b64decode(document["nonce"], validate=True)
        sealed = base64.b64decode(document["ciphertext"], validate=True)
        header = _header_bytes(document)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise EncryptedFileError(f"{where} is not a readable encrypted secrets file: {exc}") from None
    if document["keyId"] != key_id(key):
        raise EncryptedFileError(
            f"{where} was encrypted with another key (key id {document['keyId']}, "
            f"the key given has id {key_id(key)})"
        )
    try:
        plaintext = AESGCM(key).decrypt(nonce, sealed, header)
    except (InvalidTag, ValueError):
        raise EncryptedFileError(
            f"{where} is damaged or was tampered with: its content fails authentication"
        ) from None
    try:
        return _check_secrets(json.loads(plaintext))
    except ValueError as exc:
        raise EncryptedFileError(f"{where}: {exc}") from None


def read_key_file(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problem = exc.strerror if isinstance(exc, OSError) else "not text"
        raise EncryptedFileError(f"cannot read key file {path}: {problem}") from None
    if os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("key file %s can be read by other users; chmod 600 it", path)
    return parse_key(text, f"key file {path}")


def read_key_env(variable: str) -> bytes:
    text = os.environ.get(variable)
    if not text:
        raise EncryptedFileError(f"environment variable {variable} is not set (it must hold the key)")
    return parse_key(text, f"environment variable {variable}")


def read_store(path: Path, key: bytes) -> Secrets:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EncryptedFileError(f"cannot read encrypted secrets file {path}: {exc.strerror}") from None
    return unseal(data, key, str(path))


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` so that a crash at any point leaves either the old or the new file."""
    folder = path.parent
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    # The rename itself must reach the disk before the old file's content can be forgotten.
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_store(path: Path, secrets: Secrets, key: bytes) -> None:
    write_atomically(path, seal(secrets, key))


class LocalEncryptedSecretStore(PreloadedSecretStore):
    schema: ClassVar[MetadataSchema] = MetadataSchema(
        (
            MetadataField(
                "secretsFile",
                required=True,
                description="The encrypted file, as written by `pillion secrets`. A relative path is "
                "looked up next to the component file first, then in the working directory.",
            ),
            MetadataField(
                "keyFile",
                default="",
                description="A file holding the key (64 hex digits). Relative paths as for secretsFile.",
            ),
            MetadataField(
                "keyEnv",
                default="",
                description="The environment variable holding the key (64 hex digits); "
                f"`{DEFAULT_KEY_ENV}` when neither keyFile nor keyEnv is given.",
            ),
        )
    )
    features: ClassVar[frozenset[SecretStoreFeature]] = frozenset(
        {SecretStoreFeature.MULTIPLE_KEY_VALUES_PER_SECRET}
    )

    def __init__(self, metadata: dict[str, Any], context: ComponentContext) -> None:
        if metadata["keyFile"] and metadata["keyEnv"]:
            raise MetadataError("keyFile", "give keyFile or keyEnv, not both")
        self._path = local_path(metadata["secretsFile"], context.resource_dir)
        self._key_file = (
            local_path(metadata["keyFile"], context.resource_dir) if metadata["keyFile"] else None
        )
        self._key_env: str = metadata["keyEnv"] or DEFAULT_KEY_ENV
        self._secrets: Secrets = {}

    def _load(self) -> Secrets:
        key = read_key_file(self._key_file) if self._key_file else read_key_env(self._key_env)
        return read_store(self._path, key)

    async def init(self) -> None:
        self._secrets = await asyncio.to_thread(self._load)

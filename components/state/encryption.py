"""State encryption at rest: any state store, wrapped so that values are stored AES-GCM encrypted.

This is Dapr's feature (``primaryEncryptionKey`` / ``secondaryEncryptionKey`` on a state store)
and Dapr's stored format, so data written by either sidecar reads in the other::

    base64(nonce[12] || ciphertext || tag[16]) + "||" + <key name>

The key name is the name of the secret the key came from (``secretKeyRef.name``), or, for a key
given inline, a fingerprint of the key. New values are written with the primary key; a value is
read with the key its name points to, falling back to the other one, so keys can be rotated by
moving the old key to ``secondaryEncryptionKey``. Keys, etags and TTLs are left as they are; values
cannot be queried, so the wrapper never offers ``QUERY_API``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from secrets import token_bytes
from typing import Any, ClassVar, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from components.metadata import MetadataError, MetadataSchema
from components.state.base import (
    DeleteOp,
    KeyLimits,
    Operation,
    SetOp,
    StateFeature,
    StateStore,
    StoredItem,
    TransactionalStateStore,
)

_SEPARATOR = b"||"
_NONCE_BYTES = 12
_KEY_BYTES = (16, 24, 32)


class DecryptionError(Exception):
    """A stored value that none of the store's keys can decrypt."""


@dataclass(frozen=True)
class EncryptionKey:
    name: str
    aead: AESGCM

    @classmethod
    def parse(cls, text: str, secret_name: str | None) -> EncryptionKey:
        """A hex-encoded 128, 192 or 256-bit key, as Dapr takes it. The error never shows ``text``."""
        try:
            key = bytes.fromhex(text.strip())
        except ValueError:
            key = b""
        if len(key) not in _KEY_BYTES:
            raise ValueError(
                "not a hex-encoded 128, 192 or 256-bit AES key (make one with `openssl rand -hex 32`)"
            )
        name = secret_name or hmac.new(key, b"pillion state key name", hashlib.sha256).hexdigest()[:16]
        if _SEPARATOR.decode() in name:
            raise ValueError(f"the key name {name!r} must not contain '||'")
        return cls(name, AESGCM(key))


class EncryptedStateStore:
    """Implements the state store protocol over another store, which it owns only for the data
    path: the sidecar initialises and closes the inner store itself."""

    schema: ClassVar[MetadataSchema] = MetadataSchema()

    def __init__(self, inner: StateStore, primary: EncryptionKey, secondary: EncryptionKey | None) -> None:
        self._inner = inner
        self._primary = primary
        self._name = primary.name.encode()
        self._keys = [primary] if secondary is None else [primary, secondary]
        self.max_operations: int | None = getattr(inner, "max_operations", None)

    @property
    def features(self) -> frozenset[StateFeature]:
        return self._inner.features - {StateFeature.QUERY_API}

    @property
    def key_limits(self) -> KeyLimits:
        return self._inner.key_limits

    async def init(self) -> None:
        await self._inner.init()

    async def close(self) -> None:
        await self._inner.close()

    async def ping(self) -> None:
        await self._inner.ping()

    # --- values ---------------------------------------------------------------------------------

    def _seal(self, value: bytes) -> bytes:
        nonce = token_bytes(_NONCE_BYTES)
        sealed = self._primary.aead.encrypt(nonce, value, None)
        return base64.b64encode(nonce + sealed) + _SEPARATOR + self._name

    def _open(self, data: bytes) -> bytes:
        if not data:
            return data
        cut = data.rfind(_SEPARATOR)
        name = data[cut + len(_SEPARATOR) :].decode("utf-8", "replace") if cut >= 0 else ""
        if not name:
            raise DecryptionError("the stored value is not encrypted (it names no key)")
        try:
            raw = base64.b64decode(data[:cut], validate=True)
        except binascii.Error:
            raise DecryptionError(f"the stored value (key {name!r}) is not valid base64") from None
        nonce, sealed = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
        # The named key first; the others too, in case two keys share a secret's name.
        for key in sorted(self._keys, key=lambda k: k.name != name):
            try:
                return key.aead.decrypt(nonce, sealed, None)
            except (InvalidTag, ValueError):
                continue
        raise DecryptionError(
            f"the stored value was encrypted with key {name!r}, which neither primaryEncryptionKey "
            "nor secondaryEncryptionKey decrypts (or the value was tampered with)"
        )

    def _item(self, item: StoredItem | None) -> StoredItem | None:
        if item is None:
            return None
        return StoredItem(self._open(item.data), item.etag, item.expires_at)

    def _op(self, op: Operation) -> Operation:
        if isinstance(op, DeleteOp):
            return op
        return SetOp(op.key, self._seal(op.value), op.etag, op.first_write, op.ttl)

    # --- the state store protocol ---------------------------------------------------------------

    async def get(self, key: str) -> StoredItem | None:
        return self._item(await self._inner.get(key))

    async def bulk_get(self, keys: Sequence[str]) -> list[StoredItem | None]:
        return [self._item(item) for item in await self._inner.bulk_get(keys)]

    async def set(self, op: SetOp) -> None:
        await self._inner.set(cast(SetOp, self._op(op)))

    async def delete(self, op: DeleteOp) -> None:
        await self._inner.delete(op)

    async def transact(self, ops: Sequence[Operation]) -> None:
        # Only called when the inner store declares TRANSACTIONAL (see runtime/blocks/state.py).
        await cast(TransactionalStateStore, self._inner).transact([self._op(op) for op in ops])


def encryption_keys(
    metadata: Mapping[str, Any], secret_names: Mapping[str, str]
) -> tuple[EncryptionKey, EncryptionKey | None]:
    """The keys given as ``primaryEncryptionKey`` and ``secondaryEncryptionKey``.

    ``secret_names`` maps a metadata field to the secret its value was read from; that secret's
    name is the key's name, as in Dapr.
    """
    names = {field.lower(): name for field, name in secret_names.items()}

    def parse(field: str) -> EncryptionKey | None:
        text = str(metadata.get(field) or "")
        if not text:
            return None
        try:
            return EncryptionKey.parse(text, names.get(field.lower()))
        except ValueError as exc:
            raise MetadataError(field, str(exc)) from None

    primary = parse("primaryEncryptionKey")
    secondary = parse("secondaryEncryptionKey")
    if primary is None:
        raise MetadataError("secondaryEncryptionKey", "is set but primaryEncryptionKey is not")
    return primary, secondary

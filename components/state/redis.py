"""``state.redis``: state in one Redis node, readable and writable alongside Dapr's Redis store.

Layout (the same as Dapr's, so existing data reads as it is): every key is a hash with ``data``
(the value bytes) and ``version`` (an integer counter, which is the ETag). A key holding a plain
string (older data) reads back with no ETag.

Unlike Dapr, every write goes through one Lua script that checks all the etags of a request or
transaction before it changes anything, and sets the TTL in the same script, so a transaction is
all-or-nothing and a value never exists without its TTL.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, cast

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError, ResponseError

from components.base import ComponentContext
from components.metadata import FieldType, MetadataField, MetadataSchema
from components.redis_common import CONNECTION_FIELDS, RedisSettings, build_client
from components.redis_pipeline import for_settings
from components.state.base import (
    ANY_KEY,
    DeleteOp,
    ETagInvalid,
    ETagMismatch,
    KeyLimits,
    Operation,
    SetOp,
    StateFeature,
    StoredItem,
)

log = logging.getLogger("pillion.state.redis")

_INTEGER = re.compile(r"[+-]?[0-9]+")
# Redis rejects an expiry whose millisecond deadline overflows 64 bits; refusing it up front keeps
# the write script from failing half-way.
_MAX_TTL_SECONDS = 10**15

# Returns nil for a missing key, else {data, version or nil, PTTL}. A plain string (data written
# before Dapr used hashes) has no version.
_READ_SCRIPT = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then return false end
local ttl = redis.call('PTTL', KEYS[1])
if kind == 'hash' then
  local fields = redis.call('HMGET', KEYS[1], 'data', 'version')
  return {fields[1], fields[2], ttl}
end
return {redis.call('GET', KEYS[1]), false, ttl}
"""

# KEYS[i] is the key of operation i. ARGV holds five values per operation: "set" or "del", the
# expected etag ("" for none), "1" for first-write, the TTL in seconds (<= 0: none), the value.
# Pass 1 checks every operation against the state the earlier ones leave (known[key]: false when
# missing, "" when present without a version) and writes nothing if one fails: it returns i for an
# etag mismatch and -i for a first-write on an existing key. Pass 2 applies them all; DEL first so
# a set drops an old TTL, a legacy string value and Dapr's sticky "first-write" marker.
_WRITE_SCRIPT = """
local known = {}
local function version(key)
  local v = known[key]
  if v == nil then
    local kind = redis.call('TYPE', key)['ok']
    if kind == 'none' then
      v = false
    elseif kind == 'hash' then
      v = redis.call('HGET', key, 'version') or ''
    else
      v = ''
    end
    known[key] = v
  end
  return v
end

local versions = {}
for i, key in ipairs(KEYS) do
  local at = (i - 1) * 5
  local current = version(key)
  if ARGV[at + 2] ~= '' then
    if current ~= ARGV[at + 2] then return i end
  elseif ARGV[at + 3] == '1' and current ~= false then
    return -i
  end
  if ARGV[at + 1] == 'set' then
    versions[i] = string.format('%d', (tonumber(current) or 0) + 1)
    known[key] = versions[i]
  else
    known[key] = false
  end
end

for i, key in ipairs(KEYS) do
  local at = (i - 1) * 5
  redis.call('DEL', key)
  if ARGV[at + 1] == 'set' then
    redis.call('HSET', key, 'data', ARGV[at + 5], 'version', versions[i])
    if tonumber(ARGV[at + 4]) > 0 then redis.call('EXPIRE', key, ARGV[at + 4]) end
  end
end
return 0
"""


class RedisStateStore:
    schema: ClassVar[MetadataSchema] = CONNECTION_FIELDS + MetadataSchema(
        (
            MetadataField(
                "ttlInSeconds",
                FieldType.INTEGER,
                description="Default TTL of a save without `metadata.ttlInSeconds`; unset or <= 0: none.",
            ),
            MetadataField(
                "queryIndexes",
                default="",
                description="Accepted and ignored (with a warning): the query API needs RediSearch.",
            ),
        )
    )
    key_limits: ClassVar[KeyLimits] = ANY_KEY
    features: ClassVar[frozenset[StateFeature]] = frozenset(
        {StateFeature.ETAG, StateFeature.TRANSACTIONAL, StateFeature.TTL}
    )
    max_operations: int | None = None

    def __init__(self, metadata: dict[str, Any], context: ComponentContext) -> None:
        settings = RedisSettings.from_metadata(metadata)
        self._where = f"{settings.address} (db {settings.db})"
        self._default_ttl: int | None = metadata["ttlInSeconds"]
        self._query_indexes: str = metadata["queryIndexes"]
        self._client = build_client(settings)
        # Reads and writes go over one pipelined connection where it can serve (not TLS or
        # Sentinel); redis-py's client does the rest.
        self._pipeline = for_settings(settings)
        self._read = self._client.register_script(_READ_SCRIPT)
        self._write = self._client.register_script(_WRITE_SCRIPT)

    # --- life cycle -------------------------------------------------------------------------

    async def init(self) -> None:
        if self._query_indexes:
            log.warning("queryIndexes is ignored: state.redis has no query API (it needs RediSearch)")
        try:
            await self._client.ping()
            # Load now so the first requests run EVALSHA without a NOSCRIPT round trip.
            for script in (self._read, self._write):
                await self._client.script_load(script.script)
        except RedisError as exc:
            await self._client.aclose()
            raise ConnectionError(f"cannot use Redis at {self._where}: {exc}") from None

    async def close(self) -> None:
        if self._pipeline is not None:
            await self._pipeline.aclose()
        await self._client.aclose()

    async def _run(self, script: AsyncScript, keys: list[str], args: list[str | bytes]) -> Any:
        """EVALSHA straight on the pipelined connection (no ``Script`` call path on the way)."""
        pipeline = self._pipeline
        if pipeline is None:
            return await script(keys=keys, args=args)
        sha = script.sha
        try:
            return await pipeline.execute("EVALSHA", sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        # The server lost its script cache (restart, SCRIPT FLUSH): load it and go on.
        await pipeline.execute("SCRIPT", "LOAD", cast(str, script.script))
        return await pipeline.execute("EVALSHA", sha, len(keys), *keys, *args)

    async def ping(self) -> None:
        await self._client.ping()

    # --- reads ------------------------------------------------------------------------------

    @staticmethod
    def _item(key: str, reply: list[Any] | None, now: datetime) -> StoredItem | None:
        if reply is None:
            return None
        data, version, ttl_ms = reply
        if data is None:
            raise ValueError(f"key {key!r} holds a hash without a 'data' field")
        expires = now + timedelta(milliseconds=ttl_ms) if ttl_ms > 0 else None
        return StoredItem(data, version.decode() if version is not None else None, expires)

    async def get(self, key: str) -> StoredItem | None:
        reply = await self._run(self._read, [key], [])
        return self._item(key, reply, datetime.now(UTC))

    async def bulk_get(self, keys: Sequence[str]) -> list[StoredItem | None]:
        try:
            replies = await self._read_pipelined(keys)
        except NoScriptError:  # the server lost its script cache (restart, SCRIPT FLUSH)
            await self._client.script_load(_READ_SCRIPT)
            replies = await self._read_pipelined(keys)
        now = datetime.now(UTC)
        return [self._item(key, reply, now) for key, reply in zip(keys, replies, strict=True)]

    async def _read_pipelined(self, keys: Sequence[str]) -> list[Any]:
        # EVALSHA by hand: a Script object in a pipeline costs a SCRIPT EXISTS round trip each time.
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.evalsha(self._read.sha, 1, key)
        return await pipe.execute()

    # --- writes -----------------------------------------------------------------------------

    @staticmethod
    def _expected_version(op: Operation) -> str:
        if op.etag is None:
            return ""
        # Go's Atoi: an integer in int64's range (longer text would also exceed Python's limit).
        if not _INTEGER.fullmatch(op.etag) or len(op.etag) > 20 or not -(2**63) <= int(op.etag) < 2**63:
            raise ETagInvalid(op.key, f"invalid etag value {op.etag!r}: etags of state.redis are integers")
        return str(int(op.etag))

    def _ttl(self, op: SetOp) -> str:
        ttl = op.ttl if op.ttl is not None else self._default_ttl
        if ttl is None or ttl <= 0:
            return "0"
        if ttl > _MAX_TTL_SECONDS:
            raise ValueError(f"ttlInSeconds {ttl} is too large (at most {_MAX_TTL_SECONDS})")
        return str(ttl)

    async def _apply(self, ops: Sequence[Operation]) -> None:
        # Every argument is built (and every etag checked for form) before Redis sees anything.
        keys: list[str] = []
        args: list[str | bytes] = []
        for op in ops:
            keys.append(op.key)
            expected = self._expected_version(op)
            if isinstance(op, SetOp):
                args += ["set", expected, "1" if op.first_write else "0", self._ttl(op), op.value]
            else:
                args += ["del", expected, "0", "0", b""]
        failed: int = await self._run(self._write, keys, args)
        if failed > 0:
            raise ETagMismatch(ops[failed - 1].key)
        if failed < 0:
            raise ETagMismatch(ops[-failed - 1].key, "first-write: the key already exists")

    async def set(self, op: SetOp) -> None:
        await self._apply((op,))

    async def delete(self, op: DeleteOp) -> None:
        await self._apply((op,))

    async def transact(self, ops: Sequence[Operation]) -> None:
        if ops:
            await self._apply(ops)

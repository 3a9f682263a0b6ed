"""The per-request shortcuts of issue 11 keep every guarantee of the slower ways they replace."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
import redis as redis_client

from components.redis_common import CONNECTION_FIELDS, RedisSettings
from components.redis_pipeline import RedisPipeline
from runtime.compat import cloudevents, gojson
from tests.state_support import component, redis_metadata
from tests.support import start_sidecar

BODIES = [
    b'{"orderId":42,"item":"book","qty":2}',
    b'{"b": 1.10, "a": [1e3, -0, 12345678901234567890123], "c": "<&>\\u2028"}',
    b"not json",
    b"",
    b"  [1,2] trailing",
    b'{"x":' + b"9" * 5000 + b"}",
    "h\u00e9llo \u2028 <b>".encode(),
    b"\xff\xfe",
    b'{"n":-0.5,"m":-0}',
]
CONTENT_TYPES = ["application/json", "", "text/plain", "application/octet-stream", "application/x-protobuf"]
TRACES = [("00-" + "a" * 32 + "-" + "b" * 16 + "-01", ""), ('odd "parent"', 'k="<v>"')]
METADATA: list[dict[str, str]] = [{}, {"cloudevent.id": "mine", "cloudevent.subject": "s"}, {"other": "x"}]


def test_the_one_pass_envelope_is_byte_for_byte_the_general_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cloudevents, "new_event_id", lambda: "00000000-0000-4000-8000-000000000000")
    monkeypatch.setattr(cloudevents, "_now_rfc3339", lambda: "2026-01-01T00:00:00Z")
    cases = itertools.product(BODIES, CONTENT_TYPES, TRACES, METADATA, [None, "2030-01-01T00:00:00Z"])
    for body, content_type, (parent, state), metadata, expiration in cases:
        given = {
            "app_id": "app",
            "topic": "a<b>/c\u00e9",
            "pubsub": "ps",
            "content_type": content_type,
            "data": body,
            "traceparent": parent,
            "tracestate": state,
            "metadata": metadata,
        }
        envelope = cloudevents.new_envelope(**given)  # type: ignore[arg-type]
        if expiration is not None:
            envelope["expiration"] = expiration
        fast = cloudevents.encode_new_envelope(**given, expiration=expiration)  # type: ignore[arg-type]
        assert fast == gojson.encode(envelope), given


def settings_for(url: str, **extra: str) -> RedisSettings:
    metadata = {**redis_metadata(url), **extra}
    return RedisSettings.from_metadata(CONNECTION_FIELDS.parse(metadata))


@pytest.mark.anyio
async def test_commands_of_one_turn_share_a_write_and_a_caller_that_gives_up_leaves_the_rest_in_order(
    redis_url: str,
) -> None:
    pipeline = RedisPipeline(settings_for(redis_url))
    try:
        await pipeline.execute("SET", "hot-paths-k", "v")
        calls = [asyncio.ensure_future(pipeline.execute("ECHO", str(i))) for i in range(16)]
        calls[5].cancel()  # its reply still arrives and must be dropped, not given to call 6
        done = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(done[5], asyncio.CancelledError)
        assert [d for i, d in enumerate(done) if i != 5] == [str(i).encode() for i in range(16) if i != 5]
        assert await pipeline.execute("GET", "hot-paths-k") == b"v"
        with pytest.raises(redis_client.ResponseError):
            await pipeline.execute("NOSUCHCOMMAND")
        assert await pipeline.execute("DEL", "hot-paths-k") == 1
    finally:
        await pipeline.aclose()


@pytest.mark.anyio
async def test_a_server_that_does_not_answer_fails_the_commands_within_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pipeline = RedisPipeline(
        settings_for(f"redis://127.0.0.1:{port}/0", readTimeout="200ms", redisMaxRetries="-1")
    )
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(redis_client.TimeoutError):
            await pipeline.execute("PING")
        assert asyncio.get_running_loop().time() - started < 2
    finally:
        await pipeline.aclose()
        server.close()


def test_a_topic_or_key_named_healthz_is_served_and_traced(tmp_path: Path, redis_url: str) -> None:
    resources = {
        "s.yaml": component("statestore", "state.in-memory", {}),
        "p.yaml": component("pubsub", "pubsub.redis", redis_metadata(redis_url)),
    }
    sidecar = start_sidecar(tmp_path, resources=resources)
    try:
        with sidecar.client() as api:
            published = api.post("/v1.0/publish/pubsub/healthz", json={"n": 1})
            assert published.status_code == 204 and "traceparent" in published.headers
            assert (
                api.post("/v1.0/state/statestore", json=[{"key": "healthz", "value": 1}]).status_code == 204
            )
            read = api.get("/v1.0/state/statestore/healthz")
            assert read.content == b"1" and "traceparent" in read.headers
            assert "traceparent" not in api.get("/v1.0/healthz").headers
    finally:
        sidecar.stop()
        with redis_client.Redis.from_url(redis_url) as client:
            client.delete("healthz")

"""Unary gRPC calls at a fixed rate over concurrent streams of one channel, timed in nanoseconds.

    python -m bench.grpc_loadgen HOST:PORT /pkg.Service/Method REQUEST_HEX RATE STREAMS SECONDS [--pid PID]

The request is sent pre-serialized and the answer is not decoded, so the client spends as little
CPU as it can. Paced like bench.loadgen (bench.pacing). With ``--pid`` it also reports the CPU
seconds that process used during the load. Prints JSON: ``{"sent", "errors", "codes", "latency",
"cpu_seconds"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict
from typing import Any

import grpc
import uvloop

from bench.common import Latency, cpu_seconds
from bench.pacing import at_fixed_rate


async def load(
    target: str, method: str, request: bytes, rate: float, streams: int, seconds: float, pid: int | None
) -> dict[str, Any]:
    errors: list[str] = []
    async with grpc.aio.insecure_channel(target) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
        await call(request, timeout=10)  # connected before the clock starts

        async def send(worker: int) -> None:
            try:
                await call(request, timeout=10)
            except grpc.aio.AioRpcError as exc:
                errors.append(exc.code().name)

        before = cpu_seconds(pid)
        durations = await at_fixed_rate(rate, streams, seconds, send)
        used = cpu_seconds(pid) - before
    return {
        "sent": len(durations),
        "errors": len(errors),
        "codes": sorted(set(errors)),
        "latency": asdict(Latency.from_samples(durations, seconds)),
        "cpu_seconds": used,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target")
    parser.add_argument("method")
    parser.add_argument("request_hex")
    parser.add_argument("rate", type=float)
    parser.add_argument("streams", type=int)
    parser.add_argument("seconds", type=float)
    parser.add_argument("--pid", type=int)
    args = parser.parse_args()
    request = bytes.fromhex(args.request_hex)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        found = runner.run(
            load(args.target, args.method, request, args.rate, args.streams, args.seconds, args.pid)
        )
    print(json.dumps(found))


if __name__ == "__main__":
    main()

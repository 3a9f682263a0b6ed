"""Requests at a fixed rate over a fixed number of keep-alive connections, timed in nanoseconds.

    python -m bench.loadgen URL RATE CONNECTIONS SECONDS [--post BODY | --stamp] [--pid PID]

GET by default; ``--post BODY`` POSTs a JSON body; ``--stamp`` POSTs ``{"t": <CLOCK_MONOTONIC
ns>}``, a send time that bench.subscriber compares with its own reading of the same clock (Linux
keeps it system-wide), for end-to-end latency. With ``--pid`` it also reports the CPU seconds that
process used during the load. Prints JSON: ``{"sent", "errors", "statuses", "latency",
"cpu_seconds"}``.

Why not ``hey`` for the latency pairs: hey's workers tick in step, so its 16 connections send 16
requests at the same instant every 16 ms and each burst queues in the server. That measures the
queueing of the burst more than the request (a no-op endpoint shows ~1.5 ms p50 under hey against
~0.25 ms here), and hey reports to 0.1 ms only. Here the connections' schedules are staggered
(bench.pacing), so requests arrive as an even stream, and ``hey`` cannot vary the body anyway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import asdict
from typing import Any
from urllib.parse import urlsplit

import uvloop

from bench.common import Latency, cpu_seconds
from bench.pacing import at_fixed_rate
from tests.rawhttp import RawConnection


async def load(
    url: str,
    rate: float,
    connections: int,
    seconds: float,
    body: bytes | None,
    stamp: bool,
    pid: int | None = None,
) -> dict[str, Any]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    method = "POST" if body is not None or stamp else "GET"
    pool = [await RawConnection.open(parts.hostname, parts.port) for _ in range(connections)]
    errors: list[int] = []

    async def send(worker: int) -> None:
        payload = b'{"t":%d}' % time.monotonic_ns() if stamp else body or b""
        response = await pool[worker].request(method, target, payload)
        if response.status not in (200, 204):
            errors.append(response.status)

    before = cpu_seconds(pid)
    try:
        durations = await at_fixed_rate(rate, connections, seconds, send)
        used = cpu_seconds(pid) - before
    finally:
        for connection in pool:
            await connection.close()
    return {
        "sent": len(durations),
        "errors": len(errors),
        "statuses": sorted(set(errors)),
        "latency": asdict(Latency.from_samples(durations, seconds)),
        "cpu_seconds": used,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url")
    parser.add_argument("rate", type=float)
    parser.add_argument("connections", type=int)
    parser.add_argument("seconds", type=float)
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--post", help="POST this JSON body")
    what.add_argument("--stamp", action="store_true", help='POST {"t": <monotonic ns>}')
    parser.add_argument("--pid", type=int, help="report the CPU seconds this process used")
    args = parser.parse_args()
    body = args.post.encode() if args.post is not None else None
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        found = runner.run(
            load(args.url, args.rate, args.connections, args.seconds, body, args.stamp, args.pid)
        )
    print(json.dumps(found))


if __name__ == "__main__":
    main()

"""Every benchmark of the issues in one run, each beside a baseline measured in the same run.

    python -m bench.run                      # everything, about 7-8 minutes
    python -m bench.run --quick              # a smoke run: a few seconds per load
    python -m bench.run --only state,lifecycle.run
    python -m bench.run --update-readme      # also put the table into README.md

Writes bench/results/<stamp>.json, <stamp>.md and <stamp>-<chart>.png (``-quick`` in the stamp for
--quick runs, which are not for committing) and prints the Markdown table. A section that cannot
run (a missing tool or service) says how to get it and makes the exit status 1; the others still
run. Missed goals are reported in the table, not in the exit status. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench import (
    blocks,
    charts,
    cpu,
    dashboard,
    grpc,
    invoke,
    lifecycle,
    pubsub,
    report,
    scaling,
    state,
    workers,
)
from bench.common import ROOT, BenchError, SectionResult, Settings
from bench.services import Services

RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
README_BEGIN = "<!-- bench:begin -->"
README_END = "<!-- bench:end -->"

Section = Callable[[Settings, Services], SectionResult]


def scaling_section(settings: Settings, services: Services) -> SectionResult:
    counts = [1, 2] if settings.quick else [1, 4, 8]
    seconds = 1.0 if settings.quick else 5.0
    workdir = settings.workdir / "scaling"
    workdir.mkdir()
    found = scaling.measure(workdir, counts, seconds)
    table = scaling.table(found)
    return SectionResult(
        extra_markdown=f"Sidecars of one app sharing a backend (bench.scaling):\n\n{table}", data=found
    )


# In running order: start-up first, on a machine no load has disturbed yet.
SECTIONS: dict[str, Section] = {
    "lifecycle.serve": lifecycle.serve,
    "lifecycle.run": lifecycle.run,
    "cpu": cpu.section,
    "workers": workers.section,
    "state.latency": state.latency,
    "state.redis": state.redis,
    "state.postgresql": state.postgresql,
    "pubsub.publish": pubsub.publish,
    "pubsub.redis": pubsub.redis,
    "pubsub.jetstream": pubsub.jetstream,
    "invoke.latency": invoke.latency,
    "grpc.latency": grpc.latency,
    "grpc.models": grpc.models,
    "grpc.stream": grpc.stream,
    "scaling": scaling_section,
    "blocks.binding_http": blocks.binding_http,
    "blocks.lock_redis": blocks.lock_redis,
    "blocks.configuration": blocks.configuration,
    "dashboard": dashboard.section,
}


def chosen(only: str | None) -> list[str]:
    """``--only`` names sections or their groups (``state`` is every ``state.*``)."""
    if not only:
        return list(SECTIONS)
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    names = [n for n in SECTIONS if any(n == w or n.startswith(w + ".") for w in wanted)]
    unknown = [w for w in wanted if not any(n == w or n.startswith(w + ".") for n in SECTIONS)]
    if unknown:
        sys.exit(f"unknown section(s) {', '.join(unknown)}; there are: {', '.join(SECTIONS)}")
    return names


def machine() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{model}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def run_section(name: str, section: Section, settings: Settings, services: Services) -> dict[str, Any]:
    print(f"[{name}] running", file=sys.stderr, flush=True)
    began = time.monotonic()
    try:
        result = section(settings, services)
    except BenchError as exc:
        print(f"[{name}] FAILED: {exc}", file=sys.stderr, flush=True)
        return {"error": str(exc)}
    except Exception as exc:
        print(f"[{name}] FAILED:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        return {"error": f"{type(exc).__name__}: {exc}"}
    print(f"[{name}] done in {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
    found = result.to_json()
    if result.extra_markdown:
        found["extra_markdown"] = result.extra_markdown
    found["seconds_taken"] = time.monotonic() - began
    found["_charts"] = result.charts
    return found


def update_readme(table: str) -> None:
    text = README.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise BenchError(f"README.md has no {README_BEGIN} ... {README_END} block for the table")
    head, _, rest = text.partition(README_BEGIN)
    _, _, tail = rest.partition(README_END)
    README.write_text(f"{head}{README_BEGIN}\n{table}\n{README_END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20, help="the issue-2 latency pair, per side (20)")
    parser.add_argument("--load-seconds", type=float, default=10, help="every other timed load (10)")
    parser.add_argument(
        "--messages", type=int, default=5000, help="messages per delivery-throughput run (5000)"
    )
    parser.add_argument("--starts", type=int, default=5, help="start-ups per start-up measure (5)")
    parser.add_argument(
        "--scrapes", type=int, default=200, help="/metrics scrapes for the monitor's cost (200)"
    )
    parser.add_argument(
        "--latency-tool",
        choices=["loadgen", "hey"],
        default="loadgen",
        help="fixed-rate latency client: bench.loadgen (default) or hey, whose connections send in bursts",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: seconds per load, not for the record"
    )
    parser.add_argument("--only", help=f"comma-separated sections or groups: {', '.join(SECTIONS)}")
    parser.add_argument("--update-readme", action="store_true", help="put the table into README.md")
    args = parser.parse_args()
    names = chosen(args.only)
    if args.update_readme and (args.quick or args.only):
        sys.exit("--update-readme takes a complete run: no --quick, no --only")
    load_average = os.getloadavg()[0]
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%S") + ("-quick" if args.quick else "")
    with tempfile.TemporaryDirectory(prefix="pillion-bench-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        # Sidecars started here register for `pillion status` in this folder, not the user's.
        os.environ["PILLION_RUN_DIR"] = str(workdir / "run")
        settings = Settings(
            latency_seconds=3 if args.quick else args.seconds,
            load_seconds=2 if args.quick else args.load_seconds,
            messages=1000 if args.quick else args.messages,
            starts=2 if args.quick else args.starts,
            scrapes=30 if args.quick else args.scrapes,
            workdir=workdir,
            quick=args.quick,
            latency_tool=args.latency_tool,
        )
        services = Services(workdir, stack)
        sections = {name: run_section(name, SECTIONS[name], settings, services) for name in names}
    RESULTS.mkdir(exist_ok=True)
    drawn: dict[str, str] = {}
    for found in sections.values():
        for chart in found.pop("_charts", []):
            path = RESULTS / f"{stamp}-{chart.slug}.png"
            charts.draw(chart, path, machine())
            drawn[chart.slug] = path.name
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average": load_average,
        "settings_note": (
            f"Latency pair {settings.latency_seconds:g} s per side, other loads {settings.load_seconds:g} s, "
            f"{settings.messages:,} messages per throughput run, {settings.starts} start-ups, "
            f"fixed-rate latency by {settings.latency_tool}."
            + (" QUICK SMOKE RUN: not for comparison." if args.quick else "")
        ),
        "sections": sections,
    }
    (RESULTS / f"{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    table = report.markdown(results, drawn)
    (RESULTS / f"{stamp}.md").write_text(table + "\n")
    print(table)
    print(f"\nwritten: bench/results/{stamp}.json, .md and {len(drawn)} charts", file=sys.stderr)
    failed = [name for name, found in sections.items() if "error" in found]
    if args.update_readme:
        if failed:
            print("README.md left as it was: sections failed", file=sys.stderr)
        else:
            update_readme(report.markdown(results, {k: f"bench/results/{v}" for k, v in drawn.items()}))
    if failed:
        sys.exit(f"failed sections: {', '.join(failed)} (see above for what they need)")


if __name__ == "__main__":
    main()

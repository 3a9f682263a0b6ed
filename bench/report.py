"""The Markdown page of one run: the machine, one table of every pair, charts, failures."""

from __future__ import annotations

from typing import Any

MET = {True: "yes", False: "**no**", None: ""}


def markdown(results: dict[str, Any], charts: dict[str, str]) -> str:
    """``charts`` maps a chart's slug to its file name (relative to the page)."""
    head = [
        f"Run {results['date']} on {results['machine']}; load average {results['load_average']:.2f} "
        f"before the run. {results['settings_note']}",
        "",
    ]
    lines: list[str] = []
    extras: list[str] = []
    failures: list[str] = []
    for name, section in results["sections"].items():
        if "error" in section:
            lines.append(f"| **{name}: failed**, see below | | | | | |")
            first, _, more = section["error"].partition("\n")
            failures.append(f"- `{name}`: {first}" + (" (the JSON file has the rest)" if more else ""))
            continue
        for row in section["rows"]:
            lines.append(
                f"| {row['measure']} | {row['baseline']} | {row['pillion']} | {row['comparison']} "
                f"| {row['goal']} | {MET[row['met']]} |"
            )
        if section.get("extra_markdown"):
            extras += ["", section["extra_markdown"]]
    if lines:
        lines[:0] = [
            "| benchmark | baseline (same run) | Pillion | Pillion vs baseline | goal | met |",
            "|---|---|---|---|---|---|",
        ]
    lines[:0] = head
    if charts:
        lines += ["", "Latency charts: " + ", ".join(f"[{slug}]({path})" for slug, path in charts.items())]
    lines += extras
    if failures:
        lines += ["", "Sections that failed:", "", *failures]
    return "\n".join(lines)

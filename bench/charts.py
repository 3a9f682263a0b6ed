"""PNG charts of the latency pairs: p50/p90/p99 bars, Pillion next to its baselines."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed

import matplotlib.pyplot as plt

from bench.common import LatencyChart

# Baselines grey, Pillion in colour, whatever the number of series.
BASELINE_COLOURS = ("#9e9e9e", "#616161", "#bdbdbd")
PILLION_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")


def draw(chart: LatencyChart, path: Path, machine: str) -> None:
    quantiles = ("p50", "p90", "p99")
    # Baselines first, then Pillion.
    names = sorted(chart.series, key=lambda name: name.startswith("Pillion"))
    width = 0.8 / len(names)
    baselines = iter(BASELINE_COLOURS)
    ours = iter(PILLION_COLOURS)
    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=110)
    for i, name in enumerate(names):
        values = [chart.series[name].quantiles()[q] for q in quantiles]
        colour = next(ours) if name.startswith("Pillion") else next(baselines)
        positions = [q + (i - (len(names) - 1) / 2) * width for q in range(len(quantiles))]
        bars = axes.bar(positions, values, width * 0.95, label=name, color=colour)
        axes.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=8, padding=2)
    axes.set_xticks(range(len(quantiles)), quantiles)
    everything = [v for latency in chart.series.values() for v in latency.quantiles().values()]
    if min(everything) > 0 and max(everything) / min(everything) > 50:
        # Seconds next to fractions of a millisecond: only a log scale shows both.
        axes.set_yscale("log")
        axes.set_ylabel("latency (ms, log scale)")
    else:
        axes.set_ylabel("latency (ms)")
    axes.set_title(chart.title, fontsize=11)
    axes.margins(y=0.15)
    # Under the axis, so no bar is hidden behind it whatever the heights.
    axes.legend(fontsize=9, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=len(names))
    axes.spines[["top", "right"]].set_visible(False)
    figure.text(0.01, 0.01, machine, fontsize=7, color="#616161")
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    figure.savefig(path)
    plt.close(figure)

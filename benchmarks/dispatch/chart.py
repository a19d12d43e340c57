"""docs/benchmark.png: throughput and added latency against offered load, daemon and raw loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: write the file only
import matplotlib.pyplot as plt

COLOURS = {"daemon": "tab:blue", "raw": "tab:orange"}
LABELS = {"daemon": "daemon (push → receipt)", "raw": "raw aiohttp loop (due → receipt)"}


def draw(path: Path, data: dict[str, Any], title: str) -> None:
    """Two panels: delivered against offered per second; p50 and p99 against offered."""
    paced = data["paced"]
    burst = data["burst"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    for side in ("daemon", "raw"):
        offered = [p["rate"] for p in paced]
        achieved = [p[side]["achieved"] for p in paced]
        marker = {"daemon": "o-", "raw": "s--"}[side]
        left.plot(offered, achieved, marker, color=COLOURS[side], label=LABELS[side], mfc="none")
        left.plot(
            [burst[side]],
            [burst[side]],
            "*",
            markersize=14,
            color=COLOURS[side],
            label=f"{side} burst (maximum): {burst[side]:,.0f}/s",
        )
        right.plot(
            offered,
            [p[side]["p50"] for p in paced],
            "o-",
            color=COLOURS[side],
            label=f"{side} p50",
        )
        right.plot(
            offered,
            [p[side]["p99"] for p in paced],
            "s--",
            color=COLOURS[side],
            label=f"{side} p99",
        )
    top = max(burst.values()) * 1.1
    left.plot([0, top], [0, top], ":", color="grey", linewidth=1, label="delivered = offered")
    left.set(
        xlabel="offered load (requests or pushes per second)",
        ylabel="delivered per second",
        title="throughput",
        xlim=(0, top),
        ylim=(0, top),
    )
    left.legend(fontsize=7, loc="upper left")
    right.axhline(3, color="grey", linestyle=":", linewidth=1)
    right.axhline(10, color="grey", linestyle="-.", linewidth=1)
    edge = paced[-1]["rate"] * 1.1
    for y, text in ((3, "goal p50 ≤ 3 ms at 50%"), (10, "goal p99 ≤ 10 ms at 50%")):
        right.text(edge * 0.01, y * 0.93, text, fontsize=7, color="grey", va="top")
    for p in paced:
        right.axvline(p["rate"], color="lightgrey", linewidth=0.6, zorder=0)
        right.text(p["rate"], 0.12, f"{p['fraction']:.0%}", fontsize=7, color="grey", ha="right")
    right.set_yscale("log")
    right.set(
        xlabel="offered load (per second; % of the daemon's maximum)",
        ylabel="added latency (ms)",
        title="added latency",
        ylim=(0.1, None),
        xlim=(0, edge),
    )
    right.legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

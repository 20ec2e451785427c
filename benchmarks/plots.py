"""Drawings of what the benchmarks measure: a PNG next to each JSON (matplotlib, the ``bench`` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console


@dataclass
class Panel:
    """One chart: ``series`` (a name and one value per x label) drawn as grouped bars, or as lines
    with ``lines`` (``styles``: matplotlib's keywords per series, such as a colour and a dash)."""

    title: str
    ylabel: str
    xlabels: Sequence[str]
    series: dict[str, Sequence[float]] = field(default_factory=dict)
    lines: bool = False
    xlabel: str = ""
    styles: dict[str, dict[str, Any]] = field(default_factory=dict)


def png_path(json_path: str | Path) -> Path:
    """Where a benchmark's drawing goes: beside its JSON, same name."""
    return Path(json_path).with_suffix(".png")


def draw(console: Console, path: str | Path, title: str, panels: Sequence[Panel]) -> Path | None:
    """Draw ``panels`` side by side into ``path``; without matplotlib, say so and draw nothing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: files only
        import matplotlib.pyplot as plt
    except ImportError:
        console.print("[yellow]matplotlib is not installed (pip install -e '.[bench]'): no drawing[/]")
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        positions = list(range(len(panel.xlabels)))
        width = 0.8 / max(1, len(panel.series))
        for n, (name, values) in enumerate(panel.series.items()):
            if panel.lines:
                ax.plot(positions, values, marker="o", label=name, **panel.styles.get(name, {}))
                continue
            shifted = [p - 0.4 + width * (n + 0.5) for p in positions]
            bars = ax.bar(shifted, values, width, label=name)
            ax.bar_label(bars, fmt="%.3g", fontsize=8)
        ax.set_xticks(positions, [str(x) for x in panel.xlabels])
        ax.set_title(panel.title, fontsize=10)
        ax.set_ylabel(panel.ylabel)
        if panel.xlabel:
            ax.set_xlabel(panel.xlabel)
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
        if len(panel.series) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    console.print(f"drew {out}")
    return out

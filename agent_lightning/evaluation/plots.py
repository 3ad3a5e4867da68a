"""Figures of a dataset evaluation, drawn with matplotlib's Agg renderer.

Figures are built as `matplotlib.figure.Figure` objects, not through pyplot: no backend is switched
and no global figure state is touched, so a notebook's own plotting is left alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent_lightning.errors import ConfigError


def new_figure(width: float, height: float) -> Any:
    """A matplotlib figure drawn to files only (no pyplot: a notebook's backend is left alone)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'lightning-agent-trainer[plots]'") from None
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)  # rendered to files only
    return figure


def plot_confusion(confusion: list[list[int]], labels: list[str], path: Path) -> None:
    """Confusion matrix (rows: true class, columns: predicted), each row normalised, counts written in."""
    n = len(confusion)
    size = min(4 + 0.5 * n, 20)
    fig = new_figure(size, size * 0.85)
    ax = fig.subplots()
    totals = [max(sum(row), 1) for row in confusion]
    shares = [[c / t for c in row] for row, t in zip(confusion, totals, strict=True)]
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:  # numbers stay legible
        for i, row in enumerate(confusion):
            for j, count in enumerate(row):
                ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                        color="white" if shares[i][j] > 0.5 else "black")  # fmt: skip
    ax.set_xticks(range(n), labels, rotation=90 if n > 10 else 0)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted action")
    ax.set_ylabel("true action")
    ax.set_title("Confusion matrix (colour: share of the true class)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def plot_reliability(table: list[dict[str, Any]], ece: float, path: Path) -> None:
    """Reliability diagram: accuracy against confidence per bin, beside the diagonal of perfect calibration."""
    fig = new_figure(5, 5)
    ax = fig.subplots()
    filled = [row for row in table if row["count"]]
    width = table[0]["bin_hi"] - table[0]["bin_lo"]
    ax.bar([r["bin_lo"] for r in filled], [r["accuracy"] for r in filled], width=width, align="edge",
           edgecolor="black", alpha=0.7, label="accuracy in bin")  # fmt: skip
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (probability of the chosen action)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (ECE = {ece:.4f})")
    ax.legend(loc="upper left")
    fig.savefig(path, dpi=100, bbox_inches="tight")

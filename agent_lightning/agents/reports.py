"""Files an evaluation leaves in its run directory: one CSV row per episode and a histogram of returns.

Figures are drawn as `matplotlib.figure.Figure` objects, not through pyplot, so a notebook's backend and
figures are left alone (as in `agent_lightning.evaluation.plots`).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from agent_lightning.agents.rollout import Episode
from agent_lightning.evaluation.plots import new_figure


def write_episodes_csv(episodes: Sequence[Episode], path: Path) -> Path:
    """`seed,return,length,success`, one row per episode (success empty where the env has no threshold)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["seed", "return", "length", "success"])
        for episode in episodes:
            success = "" if episode.success is None else int(episode.success)
            writer.writerow([episode.seed, f"{episode.ret:.6f}", episode.length, success])
    return path


def write_returns_histogram(episodes: Sequence[Episode], path: Path, title: str, threshold: float | None) -> Path:
    """A PNG histogram of the episode returns, with the success threshold (where there is one) marked."""
    returns = [e.ret for e in episodes]
    figure = new_figure(6, 3.5)
    axes = figure.subplots()
    axes.hist(returns, bins=min(20, max(5, len(returns) // 2)), color="tab:blue", edgecolor="white")
    if threshold is not None:
        axes.axvline(threshold, color="tab:green", linestyle="--", label=f"success >= {threshold:g}")
    axes.axvline(sum(returns) / len(returns), color="tab:red", label="mean")
    axes.set(xlabel="episode return", ylabel="episodes", title=title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def write_curve(values: Sequence[float], path: Path, ylabel: str, title: str) -> Path:
    """A PNG line plot of one value per iteration (DAgger's return per iteration)."""
    figure = new_figure(6, 3.5)
    axes = figure.subplots()
    axes.plot(range(len(values)), values, marker="o")
    axes.set(xlabel="iteration", ylabel=ylabel, title=title)
    axes.set_xticks(range(len(values)))
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path

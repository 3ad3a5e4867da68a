"""Files an evaluation leaves in its run directory: one CSV row per episode and a histogram of returns."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from agent_lightning.agents.rollout import Episode


def write_episodes_csv(episodes: Sequence[Episode], path: Path) -> Path:
    """`seed,return,length,success`, one row per episode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["seed", "return", "length", "success"])
        for episode in episodes:
            writer.writerow([episode.seed, f"{episode.ret:.6f}", episode.length, int(episode.success)])
    return path


def write_returns_histogram(episodes: Sequence[Episode], path: Path, title: str, threshold: float) -> Path:
    """A PNG histogram of the episode returns, with the success threshold marked."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    returns = [e.ret for e in episodes]
    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.hist(returns, bins=min(20, max(5, len(returns) // 2)), color="tab:blue", edgecolor="white")
    axes.axvline(threshold, color="tab:green", linestyle="--", label=f"success >= {threshold:g}")
    axes.axvline(sum(returns) / len(returns), color="tab:red", label="mean")
    axes.set(xlabel="episode return", ylabel="episodes", title=title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_curve(values: Sequence[float], path: Path, ylabel: str, title: str) -> Path:
    """A PNG line plot of one value per iteration (DAgger's return per iteration)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.plot(range(len(values)), values, marker="o")
    axes.set(xlabel="iteration", ylabel=ylabel, title=title)
    axes.set_xticks(range(len(values)))
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path

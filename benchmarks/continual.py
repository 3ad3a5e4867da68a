"""Forgetting, and replay against it: train on task A, then on task B with replay 0, 0.1, 0.3.

Task A holds classes 0-4 and task B classes 5-9 of one synthetic task (10 classes of clusters, each
split prepared with `num_classes=10`). Stage A trains on A; stage B starts from A's weights
(`init_from=`: fresh optimizer and epoch count) on B, with `data.replay.path=A data.replay.fraction=f`.
After each stage the model's accuracy on A's and B's test splits is printed, then a table; last line:
`acc_A_after_B: replay=0 <a0> replay=0.1 <a1> replay=0.3 <a3>`.

    python benchmarks/continual.py [--rows 20000] [--epochs 3] [--fractions 0 0.1 0.3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

import torch

from agent_lightning.config import compose_config
from agent_lightning.data import ClusterTask, PreparedDataset
from agent_lightning.export import load_agent
from agent_lightning.prepare import prepare
from agent_lightning.train import train

FEATURES, CLASSES, BATCH = 32, 10, 256
QUIET = [
    "logger=none",
    "test=false",
    "print_config=false",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
    f"data.batch_size={BATCH}",
    "seed=0",
]


def make_tasks(directory: Path, rows: int) -> tuple[Path, Path]:
    """Task A (classes 0-4) and task B (classes 5-9) of one cluster task, each prepared with 10 classes."""
    x, y = ClusterTask(num_features=FEATURES, num_classes=CLASSES, cluster_std=1.5, seed=0).samples(0, 2 * rows)
    first = y < CLASSES // 2
    paths = directory / "task_a", directory / "task_b"
    for path, rows_of in zip(paths, (first, ~first), strict=True):
        prepare((x[rows_of].numpy(), y[rows_of].numpy()), path, num_classes=CLASSES, progress_bar=False)
    return paths


def accuracy(checkpoint: str | Path, dataset: Path) -> float:
    """Accuracy of a checkpoint's model on a prepared dataset's test split."""
    model = load_agent(checkpoint)
    split = PreparedDataset(dataset).splits["test"]
    x, y = split.rows_of(0, split.rows)
    with torch.no_grad():
        predicted = model(torch.from_numpy(x)).argmax(dim=1)
    return float((predicted == torch.from_numpy(y)).float().mean())


def run_stage(overrides: list[str], out: Path) -> Path:
    """Train one stage; return its last checkpoint."""
    train(compose_config([*QUIET, *overrides], out))
    return out / "checkpoints" / "last.ckpt"


def main() -> None:
    """Stage A, then stage B per replay fraction; print accuracies, a table and the last line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000, help="rows per task")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per stage")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("agent_lightning").setLevel(logging.WARNING)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="continual-"))
    try:
        task_a, task_b = make_tasks(work, args.rows)
        common = ["data=dataset", f"trainer.max_epochs={args.epochs}"]
        after_a = run_stage([*common, f"data.path={task_a}"], work / "stage_a")
        results = [("A", "-", accuracy(after_a, task_a), accuracy(after_a, task_b))]
        print(f"after A: acc_A={results[0][2]:.4f} acc_B={results[0][3]:.4f}", flush=True)
        for fraction in args.fractions:
            replay = [f"data.replay.path={task_a}", f"data.replay.fraction={fraction}"] if fraction else []
            after_b = run_stage(
                [
                    "data=dataset",
                    f"data.path={task_b}",
                    f"init_from={after_a}",
                    f"trainer.max_epochs={args.epochs}",
                    *replay,
                ],
                work / f"stage_b_replay{fraction}",
            )
            results.append(("B", f"{fraction:g}", accuracy(after_b, task_a), accuracy(after_b, task_b)))
            print(f"after B, replay={fraction:g}: acc_A={results[-1][2]:.4f} acc_B={results[-1][3]:.4f}", flush=True)
        print("\n| after stage | replay fraction | acc on A (test) | acc on B (test) |\n| --- | --- | --- | --- |")
        for stage, fraction, acc_a, acc_b in results:
            print(f"| {stage} | {fraction} | {acc_a:.4f} | {acc_b:.4f} |")
        print("acc_A_after_B: " + " ".join(f"replay={f} {a:.4f}" for s, f, a, _ in results if s == "B"))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

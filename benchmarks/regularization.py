"""Does regularisation + augmentation buy test accuracy? The two overfit experiments over seeds.

Trains `experiment=overfit_baseline` and `experiment=overfit_regularized` (same small noisy task,
same wide MLP) for each seed and prints mean +/- std test accuracy of each and the gain.

    python benchmarks/regularization.py [--seeds 5] [extra overrides applied to both ...]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import warnings

from agent_lightning.config import compose_config
from agent_lightning.train import train

EXPERIMENTS = ("overfit_baseline", "overfit_regularized")


def test_accuracy(experiment: str, seed: int, extra: list[str]) -> float:
    overrides = [
        f"experiment={experiment}",
        f"seed={seed}",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        *extra,
    ]
    with tempfile.TemporaryDirectory() as out:
        return train(compose_config(overrides, output_dir=out))["test/acc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to both experiments")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    seeds = list(range(1, args.seeds + 1))
    results = {name: [test_accuracy(name, seed, args.overrides) for seed in seeds] for name in EXPERIMENTS}
    print(f"seeds={seeds}")
    print("| experiment | test/acc mean | std | per seed |")
    print("| --- | --- | --- | --- |")
    for name, accs in results.items():
        per_seed = " ".join(f"{a:.4f}" for a in accs)
        print(f"| {name} | {statistics.mean(accs):.4f} | {statistics.stdev(accs):.4f} | {per_seed} |")
    gains = [r - b for b, r in zip(*results.values(), strict=True)]
    print(
        f"gain (regularized - baseline): {100 * statistics.mean(gains):+.1f} points "
        f"(+/- {100 * statistics.stdev(gains):.1f}, paired over seeds)"
    )


if __name__ == "__main__":
    main()

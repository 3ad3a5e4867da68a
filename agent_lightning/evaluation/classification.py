"""A policy scored on a prepared dataset's split: accuracy, per-class precision/recall/F1, confusion, calibration.

    from agent_lightning import Policy
    from agent_lightning.evaluation.classification import evaluate_dataset
    evaluate_dataset(Policy.load("agent.onnx"), "data/ll_demos", output_dir="eval/")

Metrics are torchmetrics', accumulated batch by batch over the memory-mapped split. Calibration is the
expected calibration error (ECE, L1 over equal-width confidence bins) of the greedy action's probability,
with the reliability table it is computed from. Writes metrics.json, per_class.csv, confusion.png and
reliability.png when `output_dir` is given.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import torch
import torchmetrics.classification as tmc
from torch import Tensor

from agent_lightning.agents.policy import Policy
from agent_lightning.data.manifest import SPLITS
from agent_lightning.data.prepared import PreparedDataset
from agent_lightning.errors import ConfigError

log = logging.getLogger("agent_lightning.evaluation")
CALIBRATION_BINS = 15  # torchmetrics' default, and the common choice for ECE


class _Reliability:
    """Per confidence bin: rows, summed confidence and correct predictions (the reliability diagram's data)."""

    def __init__(self, bins: int) -> None:
        self.bins = bins
        self.count = torch.zeros(bins, dtype=torch.float64)
        self.confidence = torch.zeros(bins, dtype=torch.float64)
        self.correct = torch.zeros(bins, dtype=torch.float64)

    def update(self, probs: Tensor, target: Tensor) -> None:
        confidence, predicted = probs.max(dim=1)
        # Same bin edges as torchmetrics: (lo, hi], the first bin also holding 0.
        index = (torch.ceil(confidence.double() * self.bins) - 1).clamp(0, self.bins - 1).long()
        self.count += torch.bincount(index, minlength=self.bins).double()
        self.confidence += torch.bincount(index, weights=confidence.double(), minlength=self.bins)
        self.correct += torch.bincount(index, weights=(predicted == target).double(), minlength=self.bins)

    def table(self) -> list[dict[str, float]]:
        rows = []
        for i in range(self.bins):
            n = float(self.count[i])
            rows.append(
                {
                    "bin_lo": i / self.bins,
                    "bin_hi": (i + 1) / self.bins,
                    "count": int(n),
                    "confidence": float(self.confidence[i] / n) if n else None,
                    "accuracy": float(self.correct[i] / n) if n else None,
                }
            )
        return rows


def _check_fit(policy: Policy, data: PreparedDataset, split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is not one of {', '.join(SPLITS)}")
    if data.rows(split) == 0:
        splits = ", ".join(f"{name}={data.rows(name)}" for name in SPLITS)
        raise ConfigError(f"data.path={data.path}: the {split} split is empty (rows: {splits}); choose split=...")
    if data.num_features != policy.obs_dim:
        raise ConfigError(
            f"data.path={data.path} has {data.num_features} features but the policy takes {policy.obs_dim}"
        )
    if data.num_classes > policy.n_actions:
        raise ConfigError(
            f"data.path={data.path} has {data.num_classes} classes but the policy has {policy.n_actions} actions"
        )


def evaluate_dataset(
    policy: Policy | str | Path,
    data_path: str | Path,
    split: str = "test",
    output_dir: str | Path | None = None,
    batch_size: int = 4096,
) -> dict[str, Any]:
    """Score `policy` on one split of a prepared dataset; write the files to `output_dir` if given."""
    policy = policy if isinstance(policy, Policy) else Policy.load(policy)
    data = PreparedDataset(data_path)
    _check_fit(policy, data, split)
    n = policy.n_actions
    metrics = {
        "accuracy": tmc.MulticlassAccuracy(n, average="micro"),
        "precision": tmc.MulticlassPrecision(n, average=None),
        "recall": tmc.MulticlassRecall(n, average=None),
        "f1": tmc.MulticlassF1Score(n, average=None),
        "confusion": tmc.MulticlassConfusionMatrix(n),
        "ece": tmc.MulticlassCalibrationError(n, n_bins=CALIBRATION_BINS, norm="l1"),
        "mce": tmc.MulticlassCalibrationError(n, n_bins=CALIBRATION_BINS, norm="max"),
    }
    reliability = _Reliability(CALIBRATION_BINS)
    nll, view = 0.0, data.splits[split]
    for start in range(0, view.rows, batch_size):
        x, y = view.rows_of(start, min(start + batch_size, view.rows))
        finite = torch.isfinite(torch.as_tensor(x))
        if not bool(finite.all()):  # prepare refuses such rows: the shard changed since (data.verify=true checks)
            row = start + int((~finite).nonzero()[0][0])
            raise ConfigError(
                f"data.path={data.path} {split} row {row} holds NaN or inf: the shard changed after prepare; re-run "
                "prepare (data.verify=true checks every shard's checksum)"
            )
        logits = policy.logits(x).cpu()
        target = torch.from_numpy(y)
        probs = torch.softmax(logits, dim=1)
        for metric in metrics.values():
            metric.update(probs, target)
        reliability.update(probs, target)
        nll += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))

    support = metrics["confusion"].compute().sum(dim=1)
    per_class = {name: metrics[name].compute() for name in ("precision", "recall", "f1")}
    present = support > 0  # macro averages over the classes the split holds
    names = data.class_names or [str(i) for i in range(n)]
    result: dict[str, Any] = {
        "split": split,
        "rows": view.rows,
        "accuracy": float(metrics["accuracy"].compute()),
        **{f"macro_{k}": float(v[present].mean()) for k, v in per_class.items()},
        "nll": nll / view.rows,
        "ece": float(metrics["ece"].compute()),
        "mce": float(metrics["mce"].compute()),
        "calibration_bins": CALIBRATION_BINS,
        "per_class": [
            {
                "class": i,
                "name": names[i] if i < len(names) else str(i),
                "support": int(support[i]),
                **{k: float(v[i]) for k, v in per_class.items()},
            }
            for i in range(n)
        ],
        "confusion": metrics["confusion"].compute().tolist(),
        "reliability": reliability.table(),
    }
    if output_dir is not None:
        result["files"] = write_report(result, Path(output_dir))
    return result


def write_report(result: dict[str, Any], output_dir: Path) -> dict[str, str]:
    """metrics.json, per_class.csv, confusion.png and reliability.png of an `evaluate_dataset` result."""
    output_dir.mkdir(parents=True, exist_ok=True)
    files = {name: str(output_dir / name) for name in ("metrics.json", "per_class.csv", "confusion.png")}
    files["reliability.png"] = str(output_dir / "reliability.png")
    with open(files["per_class.csv"], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["class", "name", "support", "precision", "recall", "f1"])
        writer.writeheader()
        writer.writerows(
            {k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()} for row in result["per_class"]
        )
    from agent_lightning.evaluation.plots import plot_confusion, plot_reliability

    labels = [row["name"] for row in result["per_class"]]
    plot_confusion(result["confusion"], labels, Path(files["confusion.png"]))
    plot_reliability(result["reliability"], result["ece"], Path(files["reliability.png"]))
    Path(files["metrics.json"]).write_text(json.dumps({**result, "files": files}, indent=2) + "\n")
    return files


def summary_line(result: dict[str, Any]) -> str:
    """One line with the headline numbers, for a command's output."""
    return (
        f"{result['split']}: accuracy={result['accuracy']:.4f} macro_f1={result['macro_f1']:.4f} "
        f"ece={result['ece']:.4f} nll={result['nll']:.4f} rows={result['rows']}"
    )

"""Scoring a policy on a prepared dataset's split: every number equals a hand computation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agent_lightning import Policy
from agent_lightning.errors import ConfigError
from agent_lightning.evaluation.classification import evaluate_dataset
from agent_lightning.model import AgentMLP
from agent_lightning.prepare import prepare

pytestmark = pytest.mark.timeout(60)
CLASSES = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A policy, and a prepared set whose test labels are its own actions with 30% replaced at random."""
    torch.manual_seed(0)
    model = AgentMLP(input_dim=4, hidden_dim=16, num_layers=1, output_dim=CLASSES).eval()
    model.normalizer.set_statistics(torch.full((4,), 2.0), torch.full((4,), 3.0))
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(1_000, 4)) * 3 + 2).astype(np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).double()
    noisy = rng.random(len(x)) < 0.3
    y = np.where(noisy, rng.integers(0, CLASSES, len(x)), logits.argmax(1).numpy())
    root = tmp_path_factory.mktemp("evaluation")
    prepare({"train": (x[:700], y[:700]), "test": (x[700:], y[700:])}, root / "data", progress_bar=False)
    return {"policy": Policy(model), "data": root / "data", "logits": logits[700:], "y": y[700:]}


def _by_hand(logits: torch.Tensor, y: np.ndarray, bins: int = 15) -> dict:
    probs = torch.softmax(logits, dim=1).numpy()
    pred, conf = probs.argmax(1), probs.max(1)
    hand = {"accuracy": float((pred == y).mean()), "nll": float(-np.log(probs[np.arange(len(y)), y]).mean())}
    for c in range(CLASSES):
        tp, fp, fn = ((pred == c) & (y == c)).sum(), ((pred == c) & (y != c)).sum(), ((pred != c) & (y == c)).sum()
        p, r = tp / (tp + fp), tp / (tp + fn)
        hand[c] = {"precision": p, "recall": r, "f1": 2 * p * r / (p + r), "support": int((y == c).sum())}
    ece = 0.0
    for b in range(bins):
        inside = (conf > b / bins) & (conf <= (b + 1) / bins)
        if inside.any():
            ece += inside.mean() * abs(conf[inside].mean() - (pred[inside] == y[inside]).mean())
    hand["ece"] = ece
    hand["confusion"] = [[int(((y == t) & (pred == p)).sum()) for p in range(CLASSES)] for t in range(CLASSES)]
    return hand


def test_dataset_metrics_equal_a_hand_computation_and_files_hold_them(setup, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = evaluate_dataset(setup["policy"], setup["data"], split="test", output_dir=out, batch_size=64)
    hand = _by_hand(setup["logits"], setup["y"])
    assert result["rows"] == 300
    assert 0.5 < hand["accuracy"] < 0.95  # a task where every metric has something to count
    assert result["accuracy"] == pytest.approx(hand["accuracy"], abs=1e-6)
    assert result["nll"] == pytest.approx(hand["nll"], abs=1e-4)
    assert result["ece"] == pytest.approx(hand["ece"], abs=1e-5) and result["ece"] > 0.01
    assert result["confusion"] == hand["confusion"]
    for row in result["per_class"]:
        expected = hand[row["class"]]
        for key in ("precision", "recall", "f1"):
            assert row[key] == pytest.approx(expected[key], abs=1e-6), (row["class"], key)
        assert row["support"] == expected["support"]
    macro_f1 = np.mean([hand[c]["f1"] for c in range(CLASSES)])
    assert result["macro_f1"] == pytest.approx(macro_f1, abs=1e-6)
    # The reliability table is the one the ECE comes from.
    table = [r for r in result["reliability"] if r["count"]]
    assert sum(r["count"] for r in table) == 300
    ece = sum(r["count"] / 300 * abs(r["accuracy"] - r["confidence"]) for r in table)
    assert ece == pytest.approx(result["ece"], abs=1e-5)

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["accuracy"] == result["accuracy"] and saved["ece"] == result["ece"]
    with open(out / "per_class.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["f1"]) for r in rows] == pytest.approx([hand[c]["f1"] for c in range(CLASSES)], abs=1e-6)
    for png in ("confusion.png", "reliability.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_dataset_that_does_not_fit_the_policy_is_named(setup) -> None:
    wider = Policy(AgentMLP(input_dim=5, hidden_dim=8, num_layers=1, output_dim=CLASSES))
    with pytest.raises(ConfigError, match=r"data.path=.* has 4 features but the policy takes 5"):
        evaluate_dataset(wider, setup["data"])
    with pytest.raises(ConfigError, match=r"the val split is empty"):
        evaluate_dataset(setup["policy"], setup["data"], split="val")


def test_a_held_out_file_prepared_alone_is_scored_and_refused_for_training(setup, tmp_path: Path) -> None:
    from agent_lightning.data import PreparedDataModule

    rng = np.random.default_rng(1)
    x = (rng.normal(size=(300, 4)) * 3 + 2).astype(np.float32)
    y = np.where(rng.random(300) < 0.2, 0, setup["policy"].act(x))  # the policy's actions, 20% relabelled
    held = prepare({"test": (x, y)}, tmp_path / "held", progress_bar=False)
    assert [held["splits"][s]["rows"] for s in ("train", "val", "test")] == [0, 0, 300]
    result = evaluate_dataset(setup["policy"], tmp_path / "held", split="test")
    expected = (setup["policy"].act(x) == y).mean()
    assert result["accuracy"] == pytest.approx(expected) and expected < 1.0
    with pytest.raises(ConfigError, match=r"the train split is empty \(a held-out set: score a checkpoint"):
        PreparedDataModule(str(tmp_path / "held"))
    with pytest.raises(ConfigError, match=r"leaves no training rows"):  # only files given per split hold none
        prepare((x, y), tmp_path / "none", val_fraction=0.5, test_fraction=0.5, progress_bar=False)


def test_a_shard_changed_to_hold_inf_after_prepare_is_one_line(setup, tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
    manifest = prepare({"test": (x, np.arange(100) % CLASSES)}, tmp_path / "ds", progress_bar=False)
    shard = np.load(tmp_path / "ds" / manifest["splits"]["test"]["shards"][0]["files"]["x"]["file"], mmap_mode="r+")
    shard[5, 2] = np.inf
    shard.flush()
    with pytest.raises(ConfigError, match=r"data.path=.*ds test row 5 holds NaN or inf: the shard changed after"):
        evaluate_dataset(setup["policy"], tmp_path / "ds")

"""End-to-end training in one process: learning, resuming, divergence."""

import csv
import os
from pathlib import Path

import pytest
import torch

from agent_lightning.callbacks import NonFiniteLossError
from agent_lightning.train import train

from .helpers import CrashAtStep, CrashError


def test_default_run_learns_far_above_chance(compose_cfg) -> None:
    metrics = train(compose_cfg("trainer.max_epochs=3"))
    assert metrics["val/acc"] > 0.8 and metrics["test/acc"] > 0.8  # chance is 0.1
    assert metrics["val/acc_best"] >= metrics["val/acc"]
    assert metrics["train/loss"] < 1.0 and metrics["perf/samples_per_s"] > 0
    # Measured training state: fp32 weights + gradients + Adam's two moments = 16 bytes per parameter.
    assert metrics["mem/state_mib"] == pytest.approx(101_386 * 16 / 2**20, rel=0.01)
    assert metrics["mem/optimizer_mib"] == pytest.approx(2 * metrics["mem/params_mib"], rel=0.01)
    run_dir = Path(metrics["run_dir"])
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert Path(metrics["best_model_path"]).parent == run_dir / "checkpoints"
    logged = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    epoch_metrics = {"train/loss_epoch", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/acc"}
    assert {"train/loss", "perf/samples_per_s", *epoch_metrics} <= set(logged)


def test_training_state_is_measured_after_the_first_optimizer_step_when_accumulating(compose_cfg, tmp_path) -> None:
    # Batch by batch, 4 to a step: the first batch's end comes before Adam has any state.
    small = ["data.train_size=4096", "trainer.max_epochs=1", "test=false", "logger=none"]
    accumulating = ["trainer.accumulate_grad_batches=4", "trainer.steps_per_execution=1"]
    metrics = train(compose_cfg(*small, *accumulating, output_dir=tmp_path / "accumulating"))
    assert metrics["mem/state_mib"] == pytest.approx(101_386 * 16 / 2**20, rel=0.01)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("model.")}


def _epoch_values(run_dir: Path, key: str) -> dict[int, float]:
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").read_text().splitlines()))
    return {int(row["epoch"]): float(row[key]) for row in rows if row.get(key)}


def test_resume_mid_epoch_reaches_the_same_numbers(compose_cfg, tmp_path: Path) -> None:
    common = [
        "trainer.deterministic=true",
        "trainer.max_epochs=3",
        "callbacks.last_checkpoint.every_n_train_steps=5",
        "scheduler=warmup_cosine",
        "scheduler.warmup_steps=10",  # per-step schedule: its state and the data position must both resume
        "test=false",
        "data.train_size=8192",
    ]
    whole = train(compose_cfg(*common, output_dir=tmp_path / "whole"))

    # Crash after 45 of 96 steps: mid-way through the second epoch (32 steps per epoch at 8192 samples).
    with pytest.raises(CrashError):
        train(compose_cfg(*common, output_dir=tmp_path / "cut"), extra_callbacks=[CrashAtStep(45)])
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 45 and saved["epoch"] == 1
    assert saved["AgentDataModule"] == {"train_position": {"epoch": 1, "batches_served": 13}}

    resumed = train(compose_cfg(*common, f"ckpt_path={last}", output_dir=tmp_path / "cut"))
    for key in ("val/acc", "val/acc_best", "val/loss"):
        assert resumed[key] == pytest.approx(whole[key], abs=1e-6), key
    # The interrupted epoch's training accuracy and mean loss count the batches from before the crash too.
    for key in ("train/acc", "train/loss_epoch"):
        cut, whole_run = _epoch_values(tmp_path / "cut", key), _epoch_values(tmp_path / "whole", key)
        assert cut[1] == pytest.approx(whole_run[1], abs=1e-6), key
    final_whole = _weights(tmp_path / "whole" / "checkpoints" / "last.ckpt")
    final_resumed = _weights(last)
    assert all(torch.allclose(final_whole[k], final_resumed[k], atol=1e-6) for k in final_whole)
    assert torch.load(last, weights_only=True)["global_step"] == 96


def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg("optimizer=sgd", "optimizer.lr=1e4", "callbacks.last_checkpoint.every_n_train_steps=1")
    with pytest.raises(NonFiniteLossError, match="diverged"):
        train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    weights = _weights(last)  # readable, and from before the divergence
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not list(last.parent.glob("*.tmp"))


def test_a_float16_run_that_diverges_is_told_to_keep_float32_weights(compose_cfg) -> None:
    # Adam's eps is 0 in float16: a 16-true run diverges whatever the learning rate.
    cfg = compose_cfg("trainer.precision=16-true", "trainer.max_steps=30", "trainer.limit_val_batches=0", "test=false")
    with pytest.raises(
        NonFiniteLossError, match=r"trainer.precision=16-true keeps the weights .* use trainer.precision=16-mixed"
    ):
        train(cfg)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "model_parallel", "auto"])
def test_every_strategy_also_runs_on_one_device(compose_cfg, strategy: str) -> None:
    environment = dict(os.environ)
    metrics = train(compose_cfg(f"strategy={strategy}", "trainer.max_epochs=1"))
    assert metrics["val/acc"] > 0.4 and metrics["test/acc"] > 0.4
    # Lightning's LOCAL_RANK / MASTER_PORT / OMP_NUM_THREADS must not outlive the run: a later command
    # started from this process would take them for torchrun's and for a user's thread setting.
    assert dict(os.environ) == environment

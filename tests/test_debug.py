"""The debug presets: fast, overfit, profile, anomaly."""

from pathlib import Path

import hydra
import torch

from agent_lightning.step import lightning_trainer_config
from agent_lightning.train import train

from .helpers import StepLosses

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.num_sanity_val_steps=0"]
SMALL = ["data.train_size=8192", "data.val_size=1024", "data.test_size=1024", *QUIET]


def test_debug_overfit_drives_the_training_loss_near_zero(compose_cfg, tmp_path: Path) -> None:
    losses = tmp_path / "losses.pt"
    metrics = train(compose_cfg("debug=overfit", *SMALL, fast=False), extra_callbacks=[StepLosses(str(losses))])
    steps = torch.load(losses)
    assert len(steps) == 50 * 4  # the same 4 batches, 50 epochs
    assert steps[0] > 1.5 and metrics["train/loss"] < 0.05


def test_debug_fast_runs_one_batch_of_each_split(compose_cfg, tmp_path: Path) -> None:
    losses = tmp_path / "losses.pt"
    metrics = train(compose_cfg("debug=fast", *SMALL, fast=False), extra_callbacks=[StepLosses(str(losses))])
    assert len(torch.load(losses)) == 1 and "val/acc" in metrics and "test/acc" in metrics


def test_debug_profile_writes_the_report_in_the_run_directory(compose_cfg, tmp_path: Path) -> None:
    metrics = train(compose_cfg("debug=profile", "trainer.max_epochs=1", *SMALL, fast=False))
    report = (Path(metrics["run_dir"]) / "profile" / "fit-report.txt").read_text()
    assert "Profiler Report" in report and "run_training_batch" in report


def test_debug_anomaly_turns_on_anomaly_detection(compose_cfg) -> None:
    cfg = compose_cfg("debug=anomaly")
    trainer = hydra.utils.instantiate(lightning_trainer_config(cfg.trainer), devices=1, logger=False)
    assert trainer._detect_anomaly is True
    assert compose_cfg()["trainer"]["detect_anomaly"] is False


def test_overfit_batches_alone_trains_on_the_same_batches_every_epoch(compose_cfg) -> None:
    import lightning.pytorch as pl

    class BatchSums(pl.Callback):
        def __init__(self) -> None:
            self.sums: list[list[float]] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.sums.append([])

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.sums[-1].append(float(batch[0].sum()))

    seen = BatchSums()  # data.shuffle stays true, as in the default config
    overfit = ["trainer.overfit_batches=2", "trainer.max_epochs=3", "trainer.steps_per_execution=1", "test=false"]
    train(compose_cfg(*SMALL, *overfit, fast=False), extra_callbacks=[seen])
    assert len(seen.sums) == 3 and len(seen.sums[0]) == 2 and seen.sums[1] == seen.sums[0] == seen.sums[2]

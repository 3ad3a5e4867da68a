"""Resuming: on changed data a fresh epoch; in place (same run directory, metrics, best-k); `ckpt_path=latest`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from agent_lightning.config import compose_config
from agent_lightning.data import ClusterTask
from agent_lightning.prepare import prepare
from agent_lightning.train import train

from .helpers import CrashAtStep, CrashError

QUICK = [
    "data=dataset",
    "data.batch_size=256",
    "data.block_rows=512",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
    "logger=none",
    "test=false",
    "callbacks.last_checkpoint.every_n_train_steps=5",
]


def _rows(rows: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x, y = ClusterTask(num_features=16, num_classes=4, cluster_std=0.7, seed=3).samples(start, start + rows)
    return x.numpy(), y.numpy()


class BatchLog(pl.Callback):
    """(epoch, batch index) of every training batch."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self.batches.append((trainer.current_epoch, idx))


def test_a_resume_on_changed_data_runs_the_interrupted_epoch_afresh_and_whole(tmp_path: Path, caplog) -> None:
    prepare(_rows(2400), tmp_path / "day1", progress_bar=False)  # 1,920 train rows: 8 batches
    prepare(_rows(4800, 2400), tmp_path / "day2", progress_bar=False)  # 3,840 train rows: 15 batches
    run_dir = tmp_path / "run"
    with pytest.raises(CrashError):  # step 11 is the fourth batch of epoch 1; last.ckpt holds step 10
        train(compose_config([*QUICK, f"data.path={tmp_path / 'day1'}"], run_dir), extra_callbacks=[CrashAtStep(11)])
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 10

    seen = BatchLog()
    with caplog.at_level(logging.WARNING, logger="agent_lightning"):
        cfg = compose_config([*QUICK, f"data.path={tmp_path / 'day2'}", f"ckpt_path={last}"], tmp_path / "resumed")
        train(cfg, extra_callbacks=[seen])
    assert seen.batches == [(1, i) for i in range(15)]  # epoch 1 again, all 15 batches of the new data
    assert "epoch 1 starts again from its first batch on the new data (it had run 2 batches" in caplog.text
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 25 and resumed["epoch"] == 1

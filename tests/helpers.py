"""Callbacks the tests inject into real runs (importable from spawned ranks)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch


class SampleRecorder(pl.Callback):
    """Saves every training sample (features) a rank sees in epoch 0."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.seen: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if trainer.current_epoch == 0:
            self.seen.append(batch[0].detach().cpu().clone())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        rank = int(os.environ.get("RANK", trainer.global_rank))
        torch.save(torch.cat(self.seen), Path(self.out_dir) / f"rank{rank}.pt")


class CrashError(RuntimeError):
    """Stands for a killed run."""


class CrashAtStep(pl.Callback):
    """Raises before running the batch that would make `step` + 1 optimizer steps."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if trainer.global_step == self.step:
            raise CrashError(f"stopped at step {self.step}")

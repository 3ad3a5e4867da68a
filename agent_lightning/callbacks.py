"""Callbacks that keep a run's checkpoints trustworthy."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class FiniteLossGuard(pl.Callback):
    """Stops training when the loss stops being finite, before a bad checkpoint can be written.

    The check stays on the device (no per-step host sync); it is read every `check_every_n_steps`
    steps and always right before a checkpoint is saved, so no saved checkpoint holds NaN weights.
    """

    def __init__(self, check_every_n_steps: int = 50) -> None:
        self.check_every_n_steps = check_every_n_steps
        self._bad: Tensor | None = None
        self._first_bad_step: Tensor | None = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Record (on device) whether this step's loss was finite."""
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        bad = ~torch.isfinite(loss.detach())
        if self._bad is None:
            self._bad = torch.zeros((), dtype=torch.bool, device=loss.device)
            self._first_bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        step = torch.tensor(trainer.global_step, device=loss.device)
        self._first_bad_step = torch.where(bad & ~self._bad, step, self._first_bad_step)
        self._bad = self._bad | bad
        if trainer.global_step % self.check_every_n_steps == 0:
            self._raise_if_bad(trainer)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        """Refuse to write a checkpoint of a diverged model."""
        self._raise_if_bad(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check at every epoch end as well."""
        self._raise_if_bad(trainer)

    def _raise_if_bad(self, trainer: pl.Trainer) -> None:
        if self._bad is None:
            return
        bad = trainer.strategy.reduce_boolean_decision(bool(self._bad.item()), all=False)
        if bad:
            step = int(self._first_bad_step.item()) if self._first_bad_step is not None else -1
            raise NonFiniteLossError(
                f"training loss became NaN/inf at step {step}; lower optimizer.lr or enable "
                "trainer.gradient_clip_val. The checkpoints already saved are untouched."
            )

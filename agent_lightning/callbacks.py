"""Callbacks: a divergence guard that keeps checkpoints trustworthy, and a training-memory probe."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.distributed.tensor import DTensor


def _local(param: Tensor) -> Tensor:
    # A sharded parameter (DTensor) is checked shard by shard: each rank looks at its own part.
    return param.to_local().detach() if isinstance(param, DTensor) else param.detach()


class NonFiniteLossError(RuntimeError):
    """The training loss or the weights became NaN or infinite."""


class FiniteLossGuard(pl.Callback):
    """Stops a diverged run before it can overwrite a good checkpoint.

    Losses are summed on the device (no per-step host sync) and the sum is checked every
    `check_every_n_steps` steps; right before any checkpoint is written the weights are checked
    too, since the last step can break them before its loss shows it.
    """

    def __init__(self, check_every_n_steps: int = 50) -> None:
        self.check_every_n_steps = check_every_n_steps
        self._loss_sum: Tensor | None = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Add this step's loss to the running sum (on the device)."""
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        # One add per step: a NaN or inf anywhere makes the running sum non-finite.
        loss = loss.detach().float()
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        if trainer.global_step % self.check_every_n_steps == 0:
            self._check(trainer, weights_finite=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check at every epoch end as well."""
        self._check(trainer, weights_finite=True)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        """Refuse to write a checkpoint of a diverged model."""
        checks = [torch.isfinite(_local(p)).all() for p in pl_module.parameters()]
        weights_finite = bool(torch.stack(checks).all()) if checks else True  # one host sync, not one per tensor
        self._check(trainer, weights_finite)

    def _check(self, trainer: pl.Trainer, weights_finite: bool) -> None:
        losses_finite = self._loss_sum is None or bool(torch.isfinite(self._loss_sum))
        local_bad = not weights_finite or not losses_finite
        if trainer.strategy.reduce_boolean_decision(local_bad, all=False):
            raise NonFiniteLossError(
                f"training diverged (NaN/inf loss or weights) by step {trainer.global_step}; lower optimizer.lr "
                "or set trainer.gradient_clip_val. Checkpoints saved before this point are untouched."
            )


def _state_bytes(tensors: Any) -> int:
    return sum(_local(t).numel() * t.element_size() for t in tensors if isinstance(t, Tensor))


class TrainingStateMemory(pl.Callback):
    """Logs, once, the memory each rank holds for training: weights, gradients and optimizer state.

    Measured from the tensors themselves after the first optimizer step (for sharded strategies,
    each rank's own shards), as `mem/params_mib`, `mem/grads_mib`, `mem/optimizer_mib` and their
    sum `mem/state_mib`; the largest rank is reported. On CUDA also `mem/cuda_peak_mib`.
    """

    def __init__(self) -> None:
        self._measured = False

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Measure right after the first step, while gradients and optimizer state both exist."""
        if self._measured:
            return
        self._measured = True
        params = list(pl_module.parameters())
        optimizer_state = [v for opt in trainer.optimizers for state in opt.state.values() for v in state.values()]
        sizes = {
            "params": _state_bytes(params),
            "grads": _state_bytes(p.grad for p in params if p.grad is not None),
            "optimizer": _state_bytes(optimizer_state),
        }
        sizes["state"] = sum(sizes.values())
        if pl_module.device.type == "cuda":
            sizes["cuda_peak"] = torch.cuda.max_memory_allocated(pl_module.device)
        for name, nbytes in sizes.items():
            value = torch.tensor(nbytes / 2**20, device=pl_module.device)
            pl_module.log(f"mem/{name}_mib", value, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max")

"""Callbacks: an always-current last.ckpt, divergence guards that keep checkpoints good, a memory probe."""

from __future__ import annotations

import math
import statistics
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import LearningRateMonitor as LightningLearningRateMonitor
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor
from torch.distributed.tensor import DTensor

from agent_lightning.checkpoint_io import clean_stale_writes
from agent_lightning.data.executions import is_group
from agent_lightning.errors import EXIT_CONFIG


def _local(param: Tensor) -> Tensor:
    # A sharded parameter (DTensor) is checked shard by shard: each rank looks at its own part.
    return param.to_local().detach() if isinstance(param, DTensor) else param.detach()


def step_loss(outputs: Any) -> Tensor | None:
    """The loss a training step returned (a tensor, or a dict's "loss"), or None."""
    return outputs["loss"] if isinstance(outputs, dict) else outputs


def step_losses(outputs: Any) -> Tensor | None:
    """The loss of every batch a loader item trained on, as a 1-d tensor (a group's "losses"), or None."""
    if isinstance(outputs, dict) and "losses" in outputs:
        return outputs["losses"]
    loss = step_loss(outputs)
    return None if loss is None else loss.reshape(1)


def _remedy(trainer: pl.Trainer) -> str:
    """What to change when a run diverges: the precision first where it keeps the weights in float16."""
    if str(trainer.precision) == "16-true":  # Adam's eps (1e-8) is 0 in float16, and its updates overflow
        return (
            "trainer.precision=16-true keeps the weights and the optimizer's state in float16: use "
            "trainer.precision=16-mixed or bf16-mixed (float32 weights)"
        )
    return "lower optimizer.lr or set trainer.gradient_clip_val"


def epoch_ends_next(trainer: pl.Trainer) -> bool:
    """At a batch end: whether the epoch's training is over (its last batch, or max_steps), so its end follows."""
    return trainer.fit_loop.epoch_loop._is_training_done


def validation_follows(trainer: pl.Trainer) -> bool:
    """At a batch end: whether Lightning validates after this batch (its own test, which it runs next)."""
    return trainer.fit_loop.epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher)


def crossed_multiple(before: int, now: int, every: int) -> bool:
    """Whether a multiple of `every` lies in (before, now]: a Lightning step may take several optimizer steps."""
    return every >= 1 and now // every > before // every


class NonFiniteLossError(RuntimeError):
    """The training loss or the weights became NaN or infinite (or exploded: see `DivergenceGuard`)."""

    exit_code = EXIT_CONFIG  # fixed by the config: a lower learning rate, gradient clipping


class LastCheckpoint(ModelCheckpoint):
    """Lightning's `ModelCheckpoint` writing only `last.ckpt`, and keeping it current.

    Lightning rewrites `last.ckpt` at validation / epoch end only when another checkpoint is saved
    in the same step, and at the end of training only if it never wrote one. Here it is written
    every `every_n_train_steps` steps (or, given `train_time_interval`, by Lightning's own timing,
    which does not wait as below), after every validation within an epoch, at every epoch end,
    at the end of training and when a signal stops the run: never twice at a step unless a
    validation or an epoch end came between. A write falls between a step and what Lightning runs
    after it, so an interval write that falls on a step a validation or the epoch's end follows waits
    for them: resumed from a checkpoint written before them, Lightning counts them as done.
    Stale `.tmp` files a killed write left behind are removed when the run starts.
    """

    handles_grouped_steps = True  # counts optimizer steps (see agent_lightning/step_groups.py)

    def __init__(self, dirpath: str, every_n_train_steps: int = 500, **kwargs: Any) -> None:
        kwargs = {"save_top_k": 0, "enable_version_counter": False, **kwargs, "save_last": True}
        super().__init__(dirpath=dirpath, every_n_train_steps=every_n_train_steps, **kwargs)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Clean what a killed write left behind (the run directory is locked: nobody else writes here)."""
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath:
            clean_stale_writes(self.dirpath)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A resumed run's checkpoint already holds this step: never rewrite it before training moves on."""
        super().on_train_start(trainer, pl_module)
        if trainer.ckpt_path:
            self._last_global_step_saved = max(self._last_global_step_saved, trainer.global_step)

    def _save_if_behind(self, trainer: pl.Trainer, rewrite: bool = False) -> None:
        # Skips sanity checks, fast_dev_run, non-fitting stages and a step already saved, unless `rewrite`:
        # a validation or an epoch end since changed what a resumed run continues (best-so-far, schedules).
        rewrite = rewrite and self._last_global_step_saved == trainer.global_step
        if rewrite:
            self._last_global_step_saved = -1  # Lightning's other reasons to skip still apply
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        elif rewrite:
            self._last_global_step_saved = trainer.global_step

    def save_now(self, trainer: pl.Trainer) -> None:
        """Write `last.ckpt` at this step unless it holds it already (a stop about to wait for a validation)."""
        self._save_if_behind(trainer)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Every `every_n_train_steps` steps: when a multiple is crossed (a Lightning step may take several)."""
        if self._train_time_interval is not None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        crossed = crossed_multiple(self._last_global_step_saved, trainer.global_step, self._every_n_train_steps)
        if crossed and not epoch_ends_next(trainer) and not validation_follows(trainer):
            self._save_if_behind(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After a validation within the epoch (one at its end is in the epoch end's write)."""
        if not epoch_ends_next(trainer):
            self._save_if_behind(trainer, rewrite=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """At every epoch end, after the module's (its schedules and counts are those of the next epoch)."""
        self._save_if_behind(trainer, rewrite=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """At the end of training: the final step."""
        self._save_if_behind(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """On a requested stop (SIGTERM/SIGINT/SIGUSR1) only: a crash mid-step may have left the state half-updated."""
        if isinstance(exception, SIGTERMException):
            self._save_if_behind(trainer)


class FiniteLossGuard(pl.Callback):
    """Stops a diverged run before it can overwrite a good checkpoint.

    Losses are summed on the device (no per-step host sync) and the sum is checked every
    `check_every_n_steps` steps; right before any checkpoint is written the weights are checked
    too, since the last step can break them before its loss shows it.
    """

    handles_grouped_steps = True  # counts optimizer steps (see agent_lightning/step_groups.py)

    def __init__(self, check_every_n_steps: int = 50) -> None:
        self.check_every_n_steps = check_every_n_steps
        self._loss_sum: Tensor | None = None
        self._checked_at = 0  # the global step of the last check

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Add this step's loss (each loss of a group) to the running sum (on the device)."""
        losses = step_losses(outputs)
        if losses is None:
            return
        # One add per step: a NaN or inf anywhere makes the running sum non-finite.
        loss = losses.detach().float()
        if len(loss) > 1:  # a group's losses; one step's stays as it is (no extra kernel per step)
            loss = loss.sum()
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        if crossed_multiple(self._checked_at, trainer.global_step, self.check_every_n_steps):
            self._checked_at = trainer.global_step
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
                f"training diverged (NaN/inf loss or weights) by step {trainer.global_step}; {_remedy(trainer)}, "
                "or, if it happens from the first steps, check the data "
                "(data.verify=true re-checks a prepared dataset's shards). Checkpoints saved before this point are "
                "untouched."
            )


class DivergenceGuard(pl.Callback):
    """Stops a run whose loss explodes while staying finite, before it overwrites a good checkpoint.

    Every `check_every_n_steps` steps (and at the first step, the baseline) the training loss is read
    (one host sync per check). The run stops when the loss exceeds `factor` x the median of the last
    `window` checks, or, with `patience` set, when it has not gone below its best for `patience`
    checks. Right before a checkpoint is written the latest loss is checked too. Ranks decide together.
    The median is never taken below the first checked loss (the untrained model's): a converged
    run's tiny, noisy losses must not count as divergence. Nor is a loss no higher than a uniform
    guess's (ln of the number of classes): a run that starts from trained weights (`init_from`, each
    DAgger iteration) has a tiny first loss, and a spike from there has not exploded.
    """

    handles_grouped_steps = True  # counts optimizer steps (see agent_lightning/step_groups.py)

    def __init__(
        self, factor: float | None = 10.0, window: int = 20, patience: int | None = None, check_every_n_steps: int = 50
    ) -> None:
        self.factor = factor
        self.window = window
        self.patience = patience
        self.check_every_n_steps = check_every_n_steps
        self.history: list[float] = []
        self._uniform_guess = 0.0  # the loss of predicting every class alike: set from the module's classes
        self._latest: Tensor | None = None
        self._previous_step: int | None = None  # the global step at the last batch end

    def state_dict(self) -> dict[str, Any]:
        """The checked losses, so a resumed run keeps its baseline."""
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the checked losses."""
        self.history = [float(v) for v in state_dict.get("history", [])]

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Record the step's loss; check it at the first step and every `check_every_n_steps`.

        A group of batches (`trainer.steps_per_execution`) brings the loss of each of its steps: the
        baseline is the run's first step's and each check reads the step it is due at, as without groups.
        """
        losses = step_losses(outputs)
        if losses is None:
            return
        losses = losses.detach()
        self._latest = losses[-1]
        step = trainer.global_step
        before = step - len(losses) if self._previous_step is None else self._previous_step
        self._previous_step = step
        if not self.history:  # the baseline: the untrained model's loss, the first of a group
            self._check_value(trainer, losses[0], record=True)
        if crossed_multiple(before, step, self.check_every_n_steps):
            due = step // self.check_every_n_steps * self.check_every_n_steps
            # The due step's batch (optimizer steps and batches differ under gradient accumulation).
            index = min(max((due - before) * len(losses) // max(step - before, 1) - 1, 0), len(losses) - 1)
            self._check_value(trainer, losses[index], record=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Count steps from where this run starts (0, or a resumed checkpoint's step); note the classes' count."""
        self._previous_step = trainer.global_step
        classes = getattr(pl_module, "hparams", {}).get("num_classes")
        self._uniform_guess = math.log(classes) if isinstance(classes, int) and classes > 1 else 0.0

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        """Refuse to write a checkpoint of a run whose latest loss already exploded."""
        if self._latest is not None and trainer.state.fn == TrainerFn.FITTING:
            self._check(trainer, record=False)

    def _reason(self, value: float) -> str | None:
        if not torch.isfinite(torch.tensor(value)):
            return None  # FiniteLossGuard reports NaN/inf
        if self.factor and self.history:
            median = max(statistics.median(self.history[-self.window :]), self.history[0])
            if value > max(self.factor * median, self._uniform_guess):
                return (
                    f"loss {value:.3g} is above {self.factor:g} x its running median {median:.3g} "
                    "(callbacks.divergence.factor)"
                )
        if self.patience and len(self.history) > self.patience:
            best_before = min(self.history[: -self.patience])
            if min([*self.history[-self.patience + 1 :], value]) >= best_before:
                return (
                    f"loss has not improved on {best_before:.3g} for {self.patience} checks "
                    "(callbacks.divergence.patience)"
                )
        return None

    def _check(self, trainer: pl.Trainer, record: bool) -> None:
        self._check_value(trainer, self._latest, record)

    def _check_value(self, trainer: pl.Trainer, loss: Tensor | None, record: bool) -> None:
        value = float(loss) if loss is not None else float("nan")
        reason = self._reason(value)
        if trainer.strategy.reduce_boolean_decision(reason is not None, all=False):
            raise NonFiniteLossError(
                f"training diverged by step {trainer.global_step}: {reason or 'on another rank'}; {_remedy(trainer)}. "
                "Checkpoints saved before this point are untouched."
            )
        if record and torch.isfinite(torch.tensor(value)):
            self.history.append(value)


def _state_bytes(tensors: Any) -> int:
    return sum(_local(t).numel() * t.element_size() for t in tensors if isinstance(t, Tensor))


class TrainingStateMemory(pl.Callback):
    """Logs, once, the memory each rank holds for training: weights, gradients and optimizer state.

    Measured from the tensors themselves after the first optimizer step (for sharded strategies,
    each rank's own shards), as `mem/params_mib`, `mem/grads_mib`, `mem/optimizer_mib` and their
    sum `mem/state_mib`; the largest rank is reported. On CUDA also `mem/cuda_peak_mib`.
    """

    handles_grouped_steps = True  # counts optimizer steps (see agent_lightning/step_groups.py)

    def __init__(self) -> None:
        self._measured = False

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Measure right after the first optimizer step, while gradients and optimizer state both exist."""
        if self._measured or trainer.global_step == 0:  # accumulating: no optimizer state before the first step
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


class LearningRateMonitor(LightningLearningRateMonitor):
    """Lightning's `LearningRateMonitor`, also every `log_every_n_steps` batches when a Lightning step runs several.

    Lightning's monitor logs the rate at a step's start when that step's number is due; a group of batches
    (`trainer.steps_per_execution`) is logged at its start when a due batch lies inside it, at the
    group's first step, with the rate of that step.
    """

    handles_grouped_steps = True  # see above and agent_lightning/step_groups.py

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        """The rate of the step about to run, at its number, when a due batch starts in this group."""
        if not is_group(batch) or self.logging_interval == "epoch":
            super().on_train_batch_start(trainer, pl_module, batch, idx)
            return
        first = trainer.fit_loop.epoch_loop._batches_that_stepped  # the loggers' step, counted in batches
        if not crossed_multiple(first, first + len(batch), trainer.log_every_n_steps):
            return
        stats = self._extract_stats(trainer, "step" if self.logging_interval is None else "any")
        for logger in trainer.loggers if stats else ():
            logger.log_metrics(stats, step=first)

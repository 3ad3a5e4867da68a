"""What a run shows while it trains: a progress bar that suits where the output goes, Lightning's lines once."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from omegaconf import DictConfig

log = logging.getLogger("agent_lightning")


def print_lightning_lines_once() -> None:
    """Lightning's log lines go out once, by the root logger's handlers (Hydra's console and log file).

    `import lightning` gives the `lightning` logger a console handler of its own. Imported before logging
    is set up, `lightning.pytorch` keeps its own handler and does not propagate; imported after (as the
    commands do: they check the config before Lightning loads), its records reach both that handler and
    the root's: every line twice.
    """
    if not logging.getLogger().handlers:
        return  # nothing set up: Lightning's own handlers are the only ones
    package = logging.getLogger("lightning")
    for handler in list(package.handlers):
        if type(handler) is logging.StreamHandler:  # Lightning's own console handler, not one a user added
            package.removeHandler(handler)


class BatchTQDMProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, counting batches when a Lightning step runs several (`trainer.steps_per_execution`)."""

    handles_grouped_steps = True  # see agent_lightning/step_groups.py

    def _group(self) -> int:
        return getattr(self.trainer.train_dataloader, "k", 1)  # `ExecutionBatches` groups k batches

    _epoch_total: int | float | None = None

    @property
    def total_train_batches(self) -> int | float:
        """The epoch's batches (Lightning counts its steps, each a group of batches), as the epoch started."""
        # Lightning's count with max_epochs=-1 is the steps left to max_steps: read every batch, it would shrink
        # with each step. It is taken once per epoch.
        if self._epoch_total is None:
            total = super().total_train_batches
            group = self._group()
            if group > 1 and total != float("inf"):
                total = min(self.trainer.num_training_batches * group, len(self.trainer.train_dataloader.loader))
            self._epoch_total = total
        return self._epoch_total

    def on_train_start(self, trainer: pl.Trainer, *args: Any) -> None:
        """Count the (possibly resumed) epoch's batches afresh."""
        self._epoch_total = None
        super().on_train_start(trainer, *args)

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        """Count the new epoch's batches."""
        self._epoch_total = None
        super().on_train_epoch_start(trainer, *args)

    def _batches_done(self, batch_idx: int) -> int:
        done, total = (batch_idx + 1) * self._group(), self.total_train_batches
        return done if total == float("inf") else min(done, int(total))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Advance the bar to the batches done in this epoch."""
        super().on_train_batch_end(trainer, pl_module, outputs, batch, self._batches_done(batch_idx) - 1)


class LineProgressBar(BatchTQDMProgressBar):
    """Progress for logs that are not a terminal (CI, `nohup`, cluster jobs): whole lines, never redraws.

    A line at the end of each epoch and after each validation; inside an epoch, a line every
    `every_seconds` seconds, and every `every_percent` percent of its batches once at least
    `min_seconds` passed since the last line (so short epochs print one line, long ones ten).
    Written through logging, so the lines also land in the run's `train.log`.
    """

    def __init__(self, every_percent: float = 10.0, every_seconds: float = 30.0, min_seconds: float = 5.0) -> None:
        super().__init__()
        if not 0 < every_percent <= 100 or every_seconds <= 0 or min_seconds < 0:
            raise ValueError(
                f"progress.every_percent={every_percent}, every_seconds={every_seconds}, min_seconds={min_seconds}: "
                "use a percent in (0, 100] and seconds > 0 (min_seconds >= 0)"
            )
        self.every_percent = every_percent
        self.every_seconds = every_seconds
        self.min_seconds = min_seconds
        self._last_line = 0.0
        self._last_percent = 0.0
        self._epoch_started = 0.0
        self._latest_loss: torch.Tensor | None = None

    # The tqdm bars stay (Lightning's hooks drive them) but never draw.
    def init_sanity_tqdm(self) -> Tqdm:
        """A bar that never draws."""
        return Tqdm(disable=True)

    init_train_tqdm = init_validation_tqdm = init_test_tqdm = init_predict_tqdm = init_sanity_tqdm

    def _speaks(self, trainer: pl.Trainer) -> bool:
        return self.is_enabled and trainer.is_global_zero

    def _metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        # The step loss reaches the bar only on the steps the loggers write (`log_every_n_steps`): an epoch
        # shorter than that would print the same old value. Lines are rare: each reads the latest batch's loss.
        if self._latest_loss is not None:
            metrics["train/loss"] = float(self._latest_loss)
        return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())

    def on_train_start(self, trainer: pl.Trainer, *args: Any) -> None:
        """Start the clock: a run resumed inside an epoch gets no epoch start."""
        super().on_train_start(trainer, *args)
        self._epoch_started = self._last_line = time.monotonic()

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        """Restart the epoch's percent and clock."""
        super().on_train_epoch_start(trainer, *args)
        self._epoch_started = self._last_line = time.monotonic()
        self._last_percent = 0.0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """One line when the epoch crossed the next `every_percent` step or `every_seconds` passed."""
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):  # kept as a tensor: read (a host sync) only when a line is printed
            self._latest_loss = loss.detach()
        total = self.total_train_batches
        if not self._speaks(trainer) or not total or total == float("inf"):
            return
        done = self._batches_done(batch_idx)
        percent = 100.0 * done / total
        now = time.monotonic()
        since = now - self._last_line
        next_step = percent - self._last_percent >= self.every_percent and since >= self.min_seconds
        due = since >= self.every_seconds or next_step
        if not due and done < total:
            return
        self._last_percent = percent - percent % self.every_percent
        self._last_line = now
        elapsed = now - self._epoch_started
        left = elapsed * (total - done) / done
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        log.info(
            "epoch %d%s %3.0f%% (%d/%d batches, %.1fs, ~%.1fs left)  %s",
            trainer.current_epoch,
            epochs,
            percent,
            done,
            total,
            elapsed,
            left,
            self._metrics(trainer, pl_module),
        )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """One line with the validation metrics (none for the sanity check)."""
        super().on_validation_end(trainer, pl_module)
        if self._speaks(trainer) and not trainer.sanity_checking:
            log.info("epoch %d validated  %s", trainer.current_epoch, self._metrics(trainer, pl_module))


def auto_progress_bar(
    every_percent: float = 10.0, every_seconds: float = 30.0, min_seconds: float = 5.0, refresh_rate: int = 1
) -> ProgressBar:
    """Lightning's live tqdm bar in a terminal; `LineProgressBar` when the output is a file or a pipe."""
    if sys.stdout.isatty():  # Lightning's bars draw on stdout
        return BatchTQDMProgressBar(refresh_rate=refresh_rate)
    return LineProgressBar(every_percent=every_percent, every_seconds=every_seconds, min_seconds=min_seconds)


def build_progress_bar(cfg: DictConfig) -> ProgressBar | None:
    """The `progress` choice as a callback, or None when `trainer.enable_progress_bar=false`."""
    import hydra

    if not cfg.trainer.get("enable_progress_bar", True) or not cfg.get("progress"):
        return None
    return hydra.utils.instantiate(cfg.progress)

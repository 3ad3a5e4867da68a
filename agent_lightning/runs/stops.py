"""Stopping cleanly on SIGTERM, SIGINT or SIGUSR1: every rank stops at the same step, saves, exits non-zero.

Lightning's own SIGTERM handling raises `SIGTERMException` between steps, and callbacks see it in
`on_exception` (where `LastCheckpoint` saves a current last.ckpt). Two things are added here: SIGINT
and SIGUSR1 (what schedulers send before pre-empting a job) stop the same way, and the decision is
taken by all ranks together (a tiny all-reduce every few steps), so a signal that reaches one rank
first cannot leave the others waiting in a collective. The handler itself only records the signal.
"""

from __future__ import annotations

import signal
import time
from types import FrameType
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from agent_lightning.callbacks import LastCheckpoint, crossed_multiple, epoch_ends_next, validation_follows
from agent_lightning.errors import STOP_SIGNALS, StoppedBySignalError
from agent_lightning.runs.overrides import pasteable_override

# One Ctrl+C reaches a rank twice: from the terminal (its process group) and forwarded by the launcher.
SAME_PRESS_SECONDS = 1.0


class StopOnSignal(pl.Callback):
    """Turns SIGTERM / SIGINT / SIGUSR1 during training into Lightning's clean stop on every rank at once."""

    handles_grouped_steps = True  # checks when a group crosses a multiple of check_every_n_steps

    def __init__(self, check_every_n_steps: int | None = None) -> None:
        self.check_every_n_steps = check_every_n_steps
        self.signum: int | None = None  # the signal that stopped the run, agreed by all ranks
        self._received: int | None = None
        self._received_at = 0.0
        self._previous: dict[int, Any] = {}
        self._checked_before: int | None = None  # the global step at the last batch end
        self._stop_after_epoch_end = False  # a stop agreed on at the epoch's last step
        self._stop_after_validation = False  # a stop agreed on at a step a validation follows

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self._received is not None and signum == signal.SIGINT and now - self._received_at > SAME_PRESS_SECONDS:
            # A second Ctrl+C: the user does not want to wait for the save. Not a KeyboardInterrupt, which
            # Lightning would turn into exit code 1.
            raise StoppedBySignalError(signum, "interrupted by a second Ctrl+C: stopped without saving")
        if self._received is None:
            self._received, self._received_at = signum, now
        previous = self._previous.get(signum)
        if signum == signal.SIGUSR1 and callable(previous):
            previous(signum, frame)  # e.g. Lightning's SLURM auto-requeue handler

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Install the handlers (after Lightning's, which only know SIGTERM and broadcast inside the handler)."""
        if self.check_every_n_steps is None:
            self.check_every_n_steps = 1 if trainer.world_size == 1 else 10
        for signum in STOP_SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals to the caller
                self._previous.pop(signum, None)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Every few steps, agree across ranks whether any rank was asked to stop."""
        if self._stop_after_validation:  # the validation it waited for did not run (a resumed run skips one)
            self._stop_after_validation = False
            _stop(trainer)
            return
        before, self._checked_before = self._checked_before, trainer.global_step
        if not crossed_multiple(
            trainer.global_step - 1 if before is None else before, trainer.global_step, self.check_every_n_steps or 1
        ):
            return
        local = self._received or 0
        if trainer.world_size > 1:
            flag = torch.tensor(local, device=pl_module.device)
            local = int(trainer.strategy.reduce(flag, reduce_op=torch.distributed.ReduceOp.MAX))
        if not local:
            return
        self.signum = local
        # A stop before the epoch's end or a validation Lightning runs after this step would skip them for good:
        # a checkpoint written now counts them as done. The stop waits for them (every rank decides alike),
        # with this step saved first, so that a kill while waiting (a long validation) loses no training.
        if epoch_ends_next(trainer):
            self._stop_after_epoch_end = True
        elif validation_follows(trainer):
            self._stop_after_validation = True
        else:
            _stop(trainer)
            return
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, LastCheckpoint):
                callback.save_now(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Stop after the validation a stop waited for."""
        if self._stop_after_validation and not trainer.sanity_checking:
            self._stop_after_validation = False
            _stop(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Stop after the epoch end a stop waited for (Lightning raises once every epoch-end hook has run)."""
        if self._stop_after_epoch_end:
            self._stop_after_epoch_end = False
            _stop(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """A SIGTERM seen by Lightning before our handlers were installed still counts as a stop."""
        if isinstance(exception, SIGTERMException) and self.signum is None:
            self.signum = self._received or signal.SIGTERM
        self._restore()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Give the caller's (Lightning's) handlers back."""
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()


def _stop(trainer: pl.Trainer) -> None:
    # Lightning's own stop: it raises SIGTERMException once this step (or validation, or epoch end) is complete.
    trainer._signal_connector.received_sigterm = True


def stopped_by_signal(trainer: pl.Trainer) -> StoppedBySignalError:
    """The error a stopped `fit` becomes: which signal, at which step, and the one line that says how to resume."""
    stopper = next((c for c in trainer.callbacks if isinstance(c, StopOnSignal)), None)
    signum = (stopper.signum if stopper else None) or signal.SIGTERM
    last = next((c.last_model_path for c in trainer.checkpoint_callbacks if getattr(c, "last_model_path", "")), "")
    name = signal.Signals(signum).name
    if not last:
        return StoppedBySignalError(signum, f"stopped by {name} at step {trainer.global_step}; no checkpoint was saved")
    return StoppedBySignalError(
        signum,
        f"stopped by {name} at step {trainer.global_step}; saved {last}: to resume, rerun the same command with "
        f"{pasteable_override('ckpt_path', last)}",
    )

"""A resume with nothing left to train: say so, and keep the metrics the run's `summary.json` holds.

A checkpoint of a run that had reached `trainer.max_epochs` (or `trainer.max_steps`) resumes to no
training batch: Lightning validates nothing, so the summary written after the test would keep only
the test metrics. The model is still the checkpoint's, so the metrics the summary recorded at that
step describe it: they are kept, with this run's own measurements on top.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from omegaconf import DictConfig

from agent_lightning.runs.loop_progress import epochs_done
from agent_lightning.tracking import SUMMARY_FILE

log = logging.getLogger("agent_lightning")


def nothing_left_to_train(trainer: pl.Trainer) -> bool:
    """Whether the restored run had already reached its limits: Lightning still starts (and ends) training."""
    if 0 <= trainer.max_steps <= trainer.global_step:
        return True
    done = epochs_done(trainer.fit_loop.state_dict())
    return trainer.max_epochs not in (None, -1) and done is not None and done >= trainer.max_epochs


class NothingLeftCheck(pl.Callback):
    """Tells, as training starts (after a resume's restore), whether this fit has anything left to train."""

    def __init__(self) -> None:
        self.nothing_left = False
        self.training_started = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A new fit: training has not started."""
        self.nothing_left = self.training_started = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Read the restored progress against the run's limits, once."""
        self.training_started = True
        self.nothing_left = nothing_left_to_train(trainer)

    def trained_nothing(self, trainer: pl.Trainer) -> bool:
        """After the fit: whether it had nothing left to train.

        A run restored at `trainer.max_steps` never starts training (Lightning's fit loop skips it, and
        `on_train_start` with it); one restored at `trainer.max_epochs` starts and ends at once.
        """
        return self.nothing_left or (not self.training_started and nothing_left_to_train(trainer))


def _limit_reached(trainer: pl.Trainer) -> str:
    max_steps = trainer.max_steps
    if max_steps is not None and max_steps != -1 and trainer.global_step >= max_steps:
        return f"trainer.max_steps={max_steps}"
    return f"trainer.max_epochs={trainer.max_epochs}"


def summary_metrics(run_dir: str | Path, global_step: int) -> dict[str, float]:
    """The metrics in `<run_dir>/summary.json`, if it was written at `global_step` (else none)."""
    try:
        summary = json.loads((Path(run_dir) / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return {}
    # Written at another point of the run (e.g. resumed from an earlier best-*.ckpt): other weights. A summary
    # written before it recorded its step is taken as the run's last.
    if not isinstance(summary, dict) or summary.get("global_step", global_step) != global_step:
        return {}
    metrics = summary.get("metrics")
    if not isinstance(metrics, dict):
        return {}
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def keep_metrics_if_untrained(trainer: pl.Trainer, cfg: DictConfig, metrics: dict[str, Any]) -> dict[str, Any]:
    """`metrics`, completed from the run's summary when this resume trained nothing (which it says in one line)."""
    check = next((c for c in trainer.callbacks if isinstance(c, NothingLeftCheck)), None)
    if not cfg.get("ckpt_path") or check is None or not check.trained_nothing(trainer):
        return metrics
    kept = summary_metrics(cfg.paths.output_dir, trainer.global_step)
    log.info(
        "Nothing left to train: ckpt_path=%s had reached %s at step %d (a resume counts the run's epochs and "
        "steps in all): raise it to train on%s",
        cfg.ckpt_path,
        _limit_reached(trainer),
        trainer.global_step,
        f"; {SUMMARY_FILE} keeps the run's metrics" if kept else "",
    )
    return {**kept, **metrics}

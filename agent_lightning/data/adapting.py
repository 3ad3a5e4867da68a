"""What the data changes in the model and the Trainer once they exist: input statistics, missing splits."""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

log = logging.getLogger("agent_lightning")


def apply_data_statistics(model: Any, datamodule: pl.LightningDataModule, from_saved_weights: bool = False) -> None:
    """Give the model's observation normaliser the train split's statistics, where the data has them.

    Saved weights (`init_from`) keep their own statistics under `data.normalize=auto`: the model first
    computes what it did, as the weights were learnt on observations standardised that way. New statistics
    would move every input under them wherever today's data drifted. `data.normalize=standard` refits them.
    """
    statistics = getattr(datamodule, "statistics", None)
    found = statistics() if callable(statistics) else None
    if found is None or not hasattr(model, "normalizer"):
        return
    if from_saved_weights:
        if getattr(datamodule, "normalize", "auto") == "auto":
            return
        log.info("data.normalize=standard: observations are standardised with this data's statistics, not init_from's")
    model.normalizer.set_statistics(*found)


def adapt_to_splits(trainer: pl.Trainer, datamodule: pl.LightningDataModule) -> bool:
    """Without a val split: no validation, checkpoints by step, no early stopping. Returns whether to test."""
    adapt = getattr(datamodule, "adapt_trainer", None)
    if callable(adapt):  # e.g. a stream: one endless epoch, validated every N steps
        adapt(trainer)
    rows = getattr(datamodule, "split_rows", None)
    if not callable(rows):
        return True
    if rows("val") == 0:
        trainer.limit_val_batches = 0
        trainer.num_sanity_val_steps = 0
        kept = []
        for callback in trainer.callbacks:
            monitors_val = str(getattr(callback, "monitor", None) or "").startswith("val/")
            if isinstance(callback, EarlyStopping) or (isinstance(callback, ModelCheckpoint) and monitors_val):
                continue
            kept.append(callback)
        if not any(isinstance(c, ModelCheckpoint) for c in kept) and trainer.checkpoint_callback is not None:
            kept.append(ModelCheckpoint(dirpath=trainer.checkpoint_callback.dirpath, save_last=True, save_top_k=0))
        trainer.callbacks = kept
        saving = "; last.ckpt is written by step and at each epoch end" if trainer.checkpoint_callback else ""
        log.info("no validation split: no validation, no early stopping%s", saving)
    if rows("test") == 0:
        log.info("no test split: testing skipped")
        return False
    return True

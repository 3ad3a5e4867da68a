"""A resume that knows its data: a checkpoint taken on other data starts a fresh epoch instead of a stale one.

A checkpoint records where the run was inside its epoch twice: the loader's position (batches
served) and Lightning's own fit-loop progress (batches ready/completed in the epoch). Both only
make sense against the same rows. Every checkpoint therefore carries the data's fingerprint (a
prepared dataset's manifest checksum, or a digest of the synthetic source's settings); resuming on
data with another fingerprint drops both positions, so the interrupted epoch runs again from its
first batch over the new data, for its full length. Weights, optimizer, schedule, the epoch number
and the step count are restored as usual. The same data resumes exactly.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl

log = logging.getLogger("agent_lightning")
FINGERPRINT_KEY = "data_fingerprint"


def data_fingerprint(datamodule: Any) -> str | None:
    """The data's fingerprint, where the datamodule has one."""
    return getattr(datamodule, "fingerprint", None) if datamodule is not None else None


def _restart_epoch(fit_loop: dict[str, Any]) -> tuple[int, int] | None:
    """Make a mid-epoch fit-loop state one that starts its epoch afresh; return (epoch, batches done) or None."""
    epochs = fit_loop.get("epoch_progress")
    batches = fit_loop.get("epoch_loop.batch_progress")
    if not epochs or not batches:
        return None
    current, total = epochs["current"], epochs["total"]
    if current["started"] <= current["processed"]:
        return None  # saved between epochs: the next one starts from its first batch anyway
    done = int(batches["current"]["processed"])
    for progress in (current, total):  # the interrupted epoch was never started, as far as Lightning knows
        progress["ready"] = progress["started"] = progress["processed"]
    for key in batches["current"]:
        batches["current"][key] = 0
    # A checkpoint written at a batch's end has not counted that batch completed yet; count it, so that
    # a loop that restarts anyway (iteration-based training, max_epochs=-1) does not skip a batch.
    batches["total"]["completed"] = batches["total"]["processed"]
    batches["is_last_batch"] = False
    fit_loop.get("state_dict", {}).pop("combined_loader", None)  # the loader's saved position
    return int(current["processed"]), done


class DataAwareResume(pl.Callback):
    """Saves the data's fingerprint in every checkpoint; on resume with other data, restarts the epoch."""

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Record which data this position belongs to."""
        fingerprint = data_fingerprint(trainer.datamodule)
        if fingerprint is not None:
            checkpoint[FINGERPRINT_KEY] = fingerprint

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Drop the saved position in the epoch when the data has changed since the checkpoint."""
        saved, now = checkpoint.get(FINGERPRINT_KEY), data_fingerprint(trainer.datamodule)
        if saved is None or now is None or saved == now:
            return  # the same data, or a checkpoint that cannot tell: resume exactly
        # Lightning restores the datamodule before callbacks and the loops after them.
        if hasattr(trainer.datamodule, "load_state_dict"):
            trainer.datamodule.load_state_dict({})
        restarted = _restart_epoch(checkpoint.get("loops", {}).get("fit_loop", {}))
        where = (
            f"epoch {restarted[0]} starts again from its first batch on the new data (it had run {restarted[1]} "
            "batches on the old)"
            if restarted
            else "the next epoch starts on the new data"
        )
        log.warning("resuming on other data than the checkpoint's (fingerprint %s, now %s): %s", saved, now, where)

"""A resume that knows its data: a checkpoint taken on other data starts a fresh epoch instead of a stale one.

A checkpoint records where the run was inside its epoch twice: the loader's position (batches
served) and Lightning's own fit-loop progress (batches ready/completed in the epoch). Both only
make sense against the same rows. Every checkpoint therefore carries the data's fingerprint (a
prepared dataset's manifest checksum, or a digest of the synthetic source's settings); resuming on
data with another fingerprint drops both positions, so the interrupted epoch runs again from its
first batch over the new data, for its full length. A position counted in batches of another size, or
over another number of data-parallel ranks, means other rows too: such a resume restarts the epoch the
same way. Weights, optimizer, schedule, the epoch number and the step count are restored as usual. The
same data and batching resume exactly.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl

from agent_lightning.runs.data_schema import DataSchema
from agent_lightning.runs.loop_progress import (
    BATCHES,
    EPOCHS,
    batches_cut_short,
    fit_loop_state,
    last_batch_ran,
    saved_within_epoch,
)
from agent_lightning.step_groups import written_steps_per_execution

log = logging.getLogger("agent_lightning")
FINGERPRINT_KEY = "data_fingerprint"
BATCHING_KEY = "data_batching"  # the global batch size and data-parallel ranks the position was counted in


def data_fingerprint(datamodule: Any) -> str | None:
    """The data's fingerprint, where the datamodule has one."""
    return getattr(datamodule, "fingerprint", None) if datamodule is not None else None


def data_batching(datamodule: Any) -> dict[str, int] | None:
    """The global batch size and the number of data-parallel ranks the datamodule serves."""
    batch_size, ranks = getattr(datamodule, "batch_size", None), getattr(datamodule, "data_parallel_size", None)
    if not isinstance(batch_size, int) or not isinstance(ranks, int):
        return None
    return {"batch_size": batch_size, "ranks": ranks}


def _what_changed(checkpoint: dict[str, Any], datamodule: Any) -> str | None:
    saved, now = checkpoint.get(FINGERPRINT_KEY), data_fingerprint(datamodule)
    if saved is not None and now is not None and saved != now:
        return f"other data than the checkpoint's (fingerprint {saved}, now {now})"
    batching, current = checkpoint.get(BATCHING_KEY), data_batching(datamodule)
    if not batching or not current:
        return None
    was = f"the checkpoint's position counts batches of {batching.get('batch_size')} over {batching.get('ranks')} ranks"
    if batching.get("batch_size") != current["batch_size"]:
        return f"data.batch_size={current['batch_size']} ({was})"
    if batching.get("ranks") != current["ranks"]:
        return f"{current['ranks']} data-parallel ranks ({was})"
    return None


def _restart_epoch(fit_loop: dict[str, Any]) -> tuple[int, int] | None:
    """Make a mid-epoch fit-loop state one that starts its epoch afresh; return (epoch, batches done) or None."""
    fit_loop.get("state_dict", {}).pop("combined_loader", None)  # the loader's saved position: other rows now
    if not saved_within_epoch(fit_loop):
        return None  # saved between epochs: the next one starts from its first batch anyway
    batches = fit_loop[BATCHES]
    current, total = fit_loop[EPOCHS]["current"], fit_loop[EPOCHS]["total"]
    if last_batch_ran(fit_loop):
        # Saved after the epoch's last batch (at its validation or end): it is finished. Counted as done, so
        # that Lightning does not continue it with the batches a loader of other rows or sizes has left.
        for progress in (current, total):
            progress["ready"] = progress["processed"] = progress["completed"] = progress["started"]
        _clear_batches(batches)
        return None
    done = int(batches["current"]["processed"])
    for progress in (current, total):  # the interrupted epoch was never started, as far as Lightning knows
        progress["ready"] = progress["started"] = progress["processed"]
    _clear_batches(batches)
    return int(current["processed"]), done


def _clear_batches(batches: dict[str, Any]) -> None:
    for key in batches["current"]:
        batches["current"][key] = 0
    # A checkpoint written at a batch's end has not counted that batch completed yet; count it, so that
    # a loop that restarts anyway (iteration-based training, max_epochs=-1) does not skip a batch.
    batches["total"]["completed"] = batches["total"]["processed"]
    batches["is_last_batch"] = False


class DataAwareResume(pl.Callback):
    """Saves the data's fingerprint in every checkpoint; on resume with other data, restarts the epoch."""

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Record which data, and which batching of it, this position belongs to."""
        fingerprint, batching = data_fingerprint(trainer.datamodule), data_batching(trainer.datamodule)
        if fingerprint is not None:
            checkpoint[FINGERPRINT_KEY] = fingerprint
        if batching is not None:
            checkpoint[BATCHING_KEY] = batching
        # What each input and output meant: checked when it is resumed, fine-tuned or evaluated on other data.
        data = trainer.datamodule
        names = (getattr(data, key, None) for key in ("feature_names", "class_names", "source_env"))
        DataSchema(*names).record(checkpoint)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Drop the saved position in the epoch when the data or its batching has changed since the checkpoint."""
        changed = _what_changed(checkpoint, trainer.datamodule)
        if changed is None:
            _continue_an_epoch_cut_short(checkpoint, trainer.datamodule)
            return  # the same data and batching, or a checkpoint that cannot tell: resume exactly
        # Lightning restores the datamodule before callbacks and the loops after them.
        if hasattr(trainer.datamodule, "load_state_dict"):
            trainer.datamodule.load_state_dict({})
        restarted = _restart_epoch(fit_loop_state(checkpoint))
        if restarted:
            # Lightning counted groups of `steps_per_execution` batches (the last group of an epoch may hold fewer).
            batches = restarted[1] * written_steps_per_execution(checkpoint)
            ran = f"{batches} batch" if batches == 1 else f"{batches} batches"
            where = f"epoch {restarted[0]} starts again from its first batch (it had run about {ran})"
        else:
            where = "the next epoch starts as usual"
        log.warning("resuming with %s: %s", changed, where)


def _continue_an_epoch_cut_short(checkpoint: dict[str, Any], datamodule: Any) -> None:
    # Lightning counts an epoch that max_steps ended early as processed: a resume would go on with the next epoch,
    # while the loader's saved position still points inside this one. Counted unprocessed, the epoch continues.
    from agent_lightning.data.stream import StreamDataModule

    if isinstance(datamodule, StreamDataModule):
        return  # a stream's epoch has no end to reach: going on with what arrives is its design
    fit_loop = fit_loop_state(checkpoint)
    cut = batches_cut_short(fit_loop)
    if cut is None:
        return
    for progress in (fit_loop[EPOCHS]["current"], fit_loop[EPOCHS]["total"]):
        progress["processed"] = min(progress["processed"], progress["started"] - 1)
    log.info(
        "resuming inside epoch %d, which trainer.max_steps had ended after %d batches",
        int(fit_loop[EPOCHS]["current"]["started"]) - 1,
        cut * written_steps_per_execution(checkpoint),
    )

"""Where in its epochs a checkpoint was saved, read from Lightning's fit-loop progress in it.

Lightning counts an epoch processed only after its last batch's end hooks: a checkpoint written at
that epoch's validation (the usual `last.ckpt`) has the epoch started but not processed, with the
batch progress marking the last batch. Both the resume checks and the data-aware resume need to
tell such a finished epoch from one interrupted part-way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

EPOCHS = "epoch_progress"
BATCHES = "epoch_loop.batch_progress"


def fit_loop_state(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint's fit-loop state (empty when it has none)."""
    return (checkpoint.get("loops") or {}).get("fit_loop") or {}


def _current_epoch_counts(fit_loop: Mapping[str, Any]) -> tuple[int, int] | None:
    current = (fit_loop.get(EPOCHS) or {}).get("current") or {}
    started, processed = current.get("started"), current.get("processed")
    if not isinstance(started, int) or not isinstance(processed, int):
        return None
    return started, processed


def saved_within_epoch(fit_loop: Mapping[str, Any]) -> bool:
    """Whether the checkpoint was written inside an epoch (not between two), as far as its progress tells."""
    counts = _current_epoch_counts(fit_loop)
    return counts is not None and isinstance(fit_loop.get(BATCHES), Mapping) and counts[0] > counts[1]


def last_batch_ran(fit_loop: Mapping[str, Any]) -> bool:
    """Whether the checkpoint was written inside an epoch after that epoch's last batch ran (the epoch is done)."""
    return saved_within_epoch(fit_loop) and bool(fit_loop[BATCHES].get("is_last_batch"))


def epochs_done(fit_loop: Mapping[str, Any]) -> int | None:
    """Whole epochs the checkpoint's run has trained (None when its progress cannot tell)."""
    counts = _current_epoch_counts(fit_loop)
    return None if counts is None else counts[1] + int(last_batch_ran(fit_loop))


def batches_cut_short(fit_loop: Mapping[str, Any]) -> int | None:
    """Batches run in an epoch that `trainer.max_steps` ended before its last batch (None: no such epoch).

    Lightning counts such an epoch processed, as if it had ended: a resume goes on with the next one.
    """
    counts, batches = _current_epoch_counts(fit_loop), fit_loop.get(BATCHES)
    if counts is None or counts[0] != counts[1] or not isinstance(batches, Mapping):
        return None
    done = (batches.get("current") or {}).get("completed")
    if not isinstance(done, int) or done <= 0 or batches.get("is_last_batch"):
        return None
    return done

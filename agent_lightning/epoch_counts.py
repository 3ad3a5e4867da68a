"""The training epoch's running counts: right predictions, samples, accumulated batches and the epoch's clock."""

from __future__ import annotations

import time

import torch
from torch import Tensor


class EpochCounts:
    """What the training step updates every batch, kept off the LightningModule.

    Assigning an attribute of an `nn.Module` runs its `__setattr__` (parameter, buffer and module
    checks), several times per step; a plain slotted object does not. The right predictions are summed
    on the device, so counting never syncs with the host.
    """

    __slots__ = ("_correct", "_started", "carried", "micro_batches", "samples", "seconds", "seen")

    def __init__(self) -> None:
        self._correct: Tensor | None = None  # right predictions of this epoch's steps, on the device
        self.carried = 0  # right predictions restored from a checkpoint written mid-epoch
        self.seen = 0  # samples behind the accuracy (restored ones included)
        self.samples = 0  # samples of this epoch's steps, for the throughput
        self.micro_batches = 0  # batches whose gradients are accumulated but not yet stepped
        self._started = time.perf_counter()
        self.seconds = 0.0  # the epoch's training time, set at its last batch

    def count(self, hits: Tensor, samples: int) -> None:
        """Add one batch: its count of right predictions (a device tensor) and its size."""
        if self._correct is None:
            self._correct = hits.clone()  # hits may be a compiled or captured graph's output buffer
        else:
            self._correct.add_(hits)
        self.seen += samples
        self.samples += samples

    def correct(self) -> int:
        """The right predictions so far (one host sync)."""
        return self.carried + (int(self._correct) if self._correct is not None else 0)

    def accuracy(self) -> Tensor | None:
        """Right predictions over samples seen, as a device tensor (None before any sample)."""
        if not self.seen:
            return None
        if self._correct is None:  # only restored counts
            return torch.tensor(self.carried / self.seen)
        return (self._correct.float() + self.carried) / self.seen

    def restore(self, correct: int, seen: int) -> None:
        """Continue the accuracy of a checkpoint written mid-epoch."""
        self._correct, self.carried, self.seen = None, correct, seen

    def reset_accuracy(self) -> None:
        """Start the next epoch's accuracy."""
        self._correct, self.carried, self.seen = None, 0, 0

    def start_epoch(self) -> None:
        """Start the epoch's clock and sample count; no batch is pending."""
        self.samples = 0
        self.micro_batches = 0
        self._started = time.perf_counter()

    def stop_clock(self) -> None:
        """Stop the epoch's clock (at its last training batch, before validation)."""
        self.seconds = time.perf_counter() - self._started

    def samples_per_second(self) -> float:
        """Samples per second of training in the current epoch (0 before any)."""
        return self.samples / self.seconds if self.samples and self.seconds > 0 else 0.0

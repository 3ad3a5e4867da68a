"""The training epoch's running counts: right predictions, loss, samples, accumulated batches and the clock."""

from __future__ import annotations

import time

import torch
from torch import Tensor

# Logits held back to count their right predictions in one argmax for many batches: a reduction's fixed
# cost (~50 us on 2 CPU cores, about 2% of the reference model's step) is paid once per this many
# elements (1 MiB of float32; 51 batches of 512 x 10) rather than once per batch.
PENDING_ELEMENTS = 1 << 18


class EpochCounts:
    """What the training step updates every batch, kept off the LightningModule.

    Assigning an attribute of an `nn.Module` runs its `__setattr__` (parameter, buffer and module
    checks), several times per step; a plain slotted object does not. The right predictions are summed
    on the device, so counting never syncs with the host.
    """

    __slots__ = (
        "_correct",
        "_loss_sum",
        "_pending",
        "_pending_elements",
        "_started",
        "carried",
        "carried_loss",
        "loss_seen",
        "micro_batches",
        "samples",
        "seconds",
        "seen",
    )

    def __init__(self) -> None:
        self._correct: Tensor | None = None  # right predictions of this epoch's steps, on the device
        self._pending: list[tuple[Tensor, Tensor]] = []  # (detached logits, targets) not counted yet
        self._pending_elements = 0
        self.carried: float = 0  # right predictions restored from a checkpoint written mid-epoch (the ranks' mean)
        self.seen = 0  # samples behind the accuracy (restored ones included)
        self._loss_sum: Tensor | None = None  # sum over this epoch's steps of loss x batch size, on the device
        self.carried_loss = 0.0  # that sum restored from a checkpoint written mid-epoch (the ranks' mean)
        self.loss_seen = 0  # samples behind the loss sum (restored ones included)
        self.samples = 0  # samples of this epoch's steps, for the throughput
        self.micro_batches = 0  # batches whose gradients are accumulated but not yet stepped
        self._started = time.perf_counter()
        self.seconds = 0.0  # the epoch's training time, set at its last batch

    def count(self, hits: Tensor, samples: int) -> None:
        """Add one batch: its count of right predictions (a device tensor, e.g. from a compiled step) and its size."""
        self._add_hits(hits)
        self.seen += samples
        self.samples += samples

    def defer(self, logits: Tensor, targets: Tensor) -> None:
        """Add one batch whose right predictions are counted later, together with the next batches'.

        `logits` must be detached; `targets` are class indices, or class probabilities. Both are held until
        counted (at most PENDING_ELEMENTS logits), so a loader must not reuse their memory for the next batch.
        """
        self._pending.append((logits, targets))
        self._pending_elements += logits.numel()
        self.seen += len(targets)
        self.samples += len(targets)
        if self._pending_elements >= PENDING_ELEMENTS:
            self._count_pending()

    def add_losses(self, losses: Tensor, sizes: list[int]) -> None:
        """Add one Lightning step's batches: their detached mean losses (a 1-D tensor) and their sizes."""
        # Summed in float32 whatever the losses' dtype (bf16-true): a bf16 sum would stop growing.
        if len(sizes) == 1:
            weighted = losses[0].float() * sizes[0]
        elif min(sizes) == max(sizes):  # a group of full batches
            weighted = losses.float().sum() * sizes[0]
        else:  # e.g. the epoch's last, smaller batch
            weighted = losses.float() @ torch.tensor(sizes, dtype=torch.float32, device=losses.device)
        self._loss_sum = weighted if self._loss_sum is None else self._loss_sum.add_(weighted)
        self.loss_seen += sum(sizes)

    def _count_pending(self) -> None:
        if not self._pending:
            return
        if len(self._pending) == 1:  # e.g. many classes: a batch fills the buffer alone, and needs no copy
            ((logits, targets),) = self._pending
        else:
            logits = torch.cat([batch for batch, _ in self._pending])
            targets = torch.cat([batch for _, batch in self._pending])
        labels = targets if targets.ndim == 1 else targets.argmax(dim=-1)
        self._pending, self._pending_elements = [], 0
        self._add_hits((logits.argmax(dim=-1) == labels).sum())

    def _add_hits(self, hits: Tensor) -> None:
        if self._correct is None:
            self._correct = hits.clone()  # hits may be a compiled or captured graph's output buffer
        else:
            self._correct.add_(hits)

    def correct(self) -> float:
        """The right predictions so far (one host sync; a restored ranks' mean may be fractional)."""
        self._count_pending()
        return self.carried + (int(self._correct) if self._correct is not None else 0)

    def accuracy(self) -> Tensor | float | None:
        """Right predictions over samples seen, as a device tensor (None before any sample).

        A float where every count was restored and none trained yet: `self.log` puts it on the module's
        device, where a CPU tensor would reach a GPU all-reduce.
        """
        if not self.seen:
            return None
        self._count_pending()
        if self._correct is None:  # only restored counts
            return self.carried / self.seen
        return (self._correct.float() + self.carried) / self.seen

    def loss_sum(self) -> float:
        """The sum of loss x batch size so far (one host sync), restored steps included."""
        return self.carried_loss + (float(self._loss_sum) if self._loss_sum is not None else 0.0)

    def mean_loss(self) -> Tensor | float | None:
        """The epoch's training loss so far, each sample weighted alike, as a device tensor (None before any).

        A float where only restored steps count (see `accuracy`).
        """
        if not self.loss_seen:
            return None
        if self._loss_sum is None:  # only restored steps
            return self.carried_loss / self.loss_seen
        return (self._loss_sum + self.carried_loss) / self.loss_seen

    def restore(self, correct: float, seen: int, loss_sum: float | None = None) -> None:
        """Continue the accuracy (and the loss, where the checkpoint holds it) of a checkpoint written mid-epoch."""
        self.reset_accuracy()
        self.carried, self.seen = correct, seen
        if loss_sum is not None:  # a checkpoint without it: the epoch's loss is the mean of the steps after it
            self.carried_loss, self.loss_seen = loss_sum, seen

    def reset_accuracy(self) -> None:
        """Start the next epoch's accuracy and loss."""
        self._correct, self.carried, self.seen = None, 0, 0
        self._pending, self._pending_elements = [], 0
        self._loss_sum, self.carried_loss, self.loss_seen = None, 0.0, 0

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

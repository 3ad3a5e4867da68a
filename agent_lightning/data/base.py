"""What every DataModule of this package shares, whatever its source."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.nn import functional as F

from agent_lightning.data.executions import ExecutionBatches, batches_of, is_group
from agent_lightning.errors import ConfigError
from agent_lightning.parallel.strategies import data_parallel_coords

log = logging.getLogger("agent_lightning")

Augmentation = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


class ResumableLoader(Protocol):
    """A batch loader that can report and restore its position in the epoch."""

    def state_dict(self) -> dict[str, Any]:
        """Epoch and position."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position."""


class RankBatchesDataModule(pl.LightningDataModule):
    """Per-rank batches of a global batch, a train loader resumable mid-epoch, on-device augmentation.

    Subclasses build a split's loader in `_loader(split, train)` for this rank (`_rank` of `_world`).
    """

    def __init__(self, batch_size: int, num_classes: int, augmentations: Sequence[Augmentation] = ()) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_classes = num_classes
        self.augmentations = list(augmentations)
        self._rank, self._world = 0, 1
        self._train_loader: ResumableLoader | None = None
        self._train_position: dict[str, Any] | None = None
        self.steps_per_execution = 1

    def group_batches(self, steps_per_execution: int) -> None:
        """Serve training batches in groups of this many: one Lightning step runs one optimizer step per batch."""
        self.steps_per_execution = steps_per_execution

    @property
    def fingerprint(self) -> str | None:
        """What identifies the training data, so a resume can tell other data from the same (None: unknown)."""
        return None

    @property
    def feature_names(self) -> list[str] | None:
        """The data's feature columns in the order the model reads them, where it names them (None: not named)."""
        return None

    @property
    def class_names(self) -> list[str] | None:
        """The data's classes in the order of their indices, where it names them (None: not named)."""
        return None

    @property
    def data_parallel_rank(self) -> int:
        """The place of this process among the data-parallel ranks (0 until `setup`)."""
        return self._rank

    @property
    def data_parallel_size(self) -> int:
        """How many data-parallel ranks share each global batch (1 until `setup`)."""
        return self._world

    @property
    def local_batch_size(self) -> int:
        """Batch size on each data-parallel rank."""
        return self.batch_size // self._world

    def _find_rank(self) -> None:
        if self.trainer is not None:
            self._rank, self._world = data_parallel_coords(self.trainer)
        if self.batch_size % self._world:
            raise ConfigError(
                f"data.batch_size={self.batch_size} is not divisible by the {self._world} data-parallel ranks"
            )

    def setup(self, stage: str) -> None:
        """Find this rank's place among the data-parallel ranks."""
        self._find_rank()

    def _loader(self, split: str, train: bool) -> Any:
        raise NotImplementedError

    def train_dataloader(self) -> Any:
        """Training batches of this rank, continuing a resumed epoch where it stopped."""
        if getattr(self, "shuffle", False) and getattr(self.trainer, "overfit_batches", 0):
            # What Lightning does to a DataLoader it can reach; these loaders it cannot: the same batches each epoch.
            self.shuffle = False
            log.info("trainer.overfit_batches: training batches are not shuffled, so each epoch sees the same ones")
        self._train_loader = self._loader("train", train=True)
        if self._train_position is not None:
            self._train_loader.load_state_dict(self._train_position)
            self._train_position = None
        if self.steps_per_execution > 1:
            return ExecutionBatches(self._train_loader, self.steps_per_execution)
        return self._train_loader

    def val_dataloader(self) -> Any:
        """The validation batches of this rank."""
        return self._loader("val", train=False)

    def test_dataloader(self) -> Any:
        """The test batches of this rank."""
        return self._loader("test", train=False)

    # The position in the epoch is also kept here, not only through Lightning's loader-state
    # hooks: those are skipped when something (e.g. `trainer.estimated_stepping_batches` in a
    # per-step LR schedule) builds the train loader before the checkpoint's loop state is loaded.
    def state_dict(self) -> dict[str, Any]:
        """The train loader's epoch and position, saved in every checkpoint."""
        return {"train_position": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the train loader where the checkpoint left it."""
        self._train_position = state_dict.get("train_position")
        if self._train_loader is not None and self._train_position is not None:
            self._train_loader.load_state_dict(self._train_position)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Pass through a batch (or group) already on `device`, as the loaders build them; move any other."""
        # Lightning's generic walk over a group of batches costs about 1% of a small model's step.
        if _tensors_on(batch, device):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment training batches on the device (targets become class probabilities); never val/test."""
        if not self.augmentations or self.trainer is None or not self.trainer.training:
            return batch
        if is_group(batch):
            return tuple(self._augment(*one) for one in batch)
        return self._augment(*batch)

    def _augment(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        targets = F.one_hot(labels, self.num_classes).to(features.dtype)
        for augment in self.augmentations:
            features, targets = augment(features, targets)
        return features, targets


def _tensors_on(batch: Any, device: torch.device) -> bool:
    # A (features, targets) batch or a tuple of them, every tensor already on `device`.
    if not isinstance(batch, tuple) or not batch:
        return False
    return all(
        isinstance(pair, tuple) and all(isinstance(t, Tensor) and t.device == device for t in pair)
        for pair in batches_of(batch)
    )

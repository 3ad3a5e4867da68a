"""The LightningDataModule for a prepared dataset (`data=dataset data.path=...`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
from torch import Tensor
from torch.nn import functional as F

from agent_lightning.data.prepared import BlockBatchLoader, PreparedDataset
from agent_lightning.errors import ConfigError
from agent_lightning.parallel import data_parallel_coords

Augmentation = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
NORMALIZE = ("standard", "none")


class PreparedDataModule(pl.LightningDataModule):
    """Serves train/val/test batches of a prepared dataset, memory-mapped, each rank its own part.

    `batch_size` is the global batch, split across the data-parallel ranks. `normalize=standard`
    standardises observations with the train split's statistics, inside the model (see
    `statistics`). `verify=True` checks every shard's SHA-256 before training.
    """

    def __init__(
        self,
        path: str,
        batch_size: int = 512,
        normalize: str = "standard",
        verify: bool = False,
        shuffle: bool = True,
        block_rows: int = 8192,
        drop_last: bool = False,
        seed: int = 0,
        augmentations: Sequence[Augmentation] = (),
    ) -> None:
        super().__init__()
        if normalize not in NORMALIZE:
            raise ConfigError(f"data.normalize={normalize!r} is not one of {', '.join(NORMALIZE)}")
        if isinstance(block_rows, bool) or not isinstance(block_rows, int) or block_rows < 1:
            raise ConfigError(f"data.block_rows={block_rows!r} must be a whole number >= 1")
        self.dataset = PreparedDataset(path, verify=verify)
        if not self.dataset.rows("train"):
            raise ConfigError(f"data.path={path}: the train split is empty")
        self.batch_size, self.normalize, self.shuffle = batch_size, normalize, shuffle
        self.block_rows, self.drop_last, self.seed = block_rows, drop_last, seed
        self.augmentations = list(augmentations)
        self.num_classes = self.dataset.num_classes
        self._rank, self._world = 0, 1
        self._train_loader: BlockBatchLoader | None = None
        self._train_position: dict[str, Any] | None = None

    def split_rows(self, split: str) -> int:
        """Rows of a split (0 when the dataset has none)."""
        return self.dataset.rows(split)

    def statistics(self) -> tuple[Tensor, Tensor] | None:
        """(mean, std) the model should standardise observations with, or None for `normalize=none`."""
        return self.dataset.statistics() if self.normalize == "standard" else None

    @property
    def local_batch_size(self) -> int:
        """Batch size on each data-parallel rank."""
        return self.batch_size // self._world

    def setup(self, stage: str) -> None:
        """Find this rank's place among the data-parallel ranks."""
        if self.trainer is not None:
            self._rank, self._world = data_parallel_coords(self.trainer)
        if self.batch_size % self._world:
            raise ConfigError(
                f"data.batch_size={self.batch_size} is not divisible by the {self._world} data-parallel ranks"
            )

    def _loader(self, split: str, train: bool) -> BlockBatchLoader:
        return BlockBatchLoader(
            self.dataset.splits[split],
            self.local_batch_size,
            rank=self._rank,
            world=self._world,
            seed=self.seed,
            train=train,
            shuffle=self.shuffle,
            block_rows=self.block_rows,
            drop_last=self.drop_last,
            fingerprint=self.dataset.fingerprint,
        )

    def train_dataloader(self) -> BlockBatchLoader:
        """Block-shuffled per epoch; every rank takes the same number of batches."""
        self._train_loader = self._loader("train", train=True)
        if self._train_position is not None:
            self._train_loader.load_state_dict(self._train_position)
            self._train_position = None
        return self._train_loader

    def val_dataloader(self) -> BlockBatchLoader:
        """Stored order, an equal part per rank."""
        return self._loader("val", train=False)

    def test_dataloader(self) -> BlockBatchLoader:
        """Stored order, an equal part per rank."""
        return self._loader("test", train=False)

    # Kept here as well as through Lightning's loader-state hooks (see AgentDataModule).
    def state_dict(self) -> dict[str, Any]:
        """The train loader's epoch, position and dataset fingerprint, saved in every checkpoint."""
        return {"train_position": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the train loader where the checkpoint left it."""
        self._train_position = state_dict.get("train_position")
        if self._train_loader is not None and self._train_position is not None:
            self._train_loader.load_state_dict(self._train_position)

    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int) -> tuple[Tensor, Tensor]:
        """Augment training batches on the device (targets become class probabilities); never val/test."""
        if not self.augmentations or self.trainer is None or not self.trainer.training:
            return batch
        features, labels = batch
        targets = F.one_hot(labels, self.num_classes).to(features.dtype)
        for augment in self.augmentations:
            features, targets = augment(features, targets)
        return features, targets

    def reachable_accuracy(self, split: str = "val") -> float | None:
        """Unknown for real data."""
        return None

"""The LightningDataModule: splits, per-rank shards and the global-to-local batch size."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from agent_lightning.data.base import Augmentation, RankBatchesDataModule
from agent_lightning.data.loader import SliceBatchLoader
from agent_lightning.data.synthetic import ClusterTask
from agent_lightning.errors import ConfigError


@dataclass(frozen=True)
class Shard:
    """One rank's contiguous slice of a split."""

    start: int
    stop: int


def shard_of(split_start: int, split_size: int, rank: int, world: int) -> Shard:
    """Equal contiguous shards; the `split_size % world` leftover samples are dropped so every rank steps equally."""
    per_rank = split_size // world
    start = split_start + rank * per_rank
    return Shard(start, start + per_rank)


class AgentDataModule(RankBatchesDataModule):
    """Serves train/val/test batches of a sample source, each rank only its own shard.

    `batch_size` is the global batch: each of the data-parallel ranks gets `batch_size / ranks`.
    `augmentations` (see `agent_lightning.augment`) transform training batches once they are on
    the device.
    """

    def __init__(
        self,
        source: ClusterTask,
        train_size: int | None = 100_000,
        val_size: int = 10_000,
        test_size: int = 10_000,
        batch_size: int = 512,
        shuffle: bool = True,
        on_device: bool = True,
        seed: int = 0,
        global_order: bool = False,
        augmentations: Sequence[Augmentation] = (),
    ) -> None:
        super().__init__(batch_size, source.num_classes, augmentations)
        if train_size is None:  # every sample that is not validation or test
            if not hasattr(source, "__len__"):
                raise ConfigError("data.train_size=null needs a source of known length")
            train_size = len(source) - val_size - test_size
        if hasattr(source, "__len__") and train_size + val_size + test_size > len(source):
            raise ConfigError(
                f"data.train_size + val_size + test_size = {train_size + val_size + test_size} but the source has "
                f"{len(source)} samples"
            )
        for key, value in (("train_size", train_size), ("val_size", val_size), ("test_size", test_size)):
            if value < 1:
                raise ConfigError(f"data.{key} must be >= 1, got {value}")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        self.source = source
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.shuffle = shuffle
        self.on_device = on_device
        self.seed = seed
        self.global_order = global_order
        self._splits: dict[str, tuple[Tensor, Tensor]] = {}

    @property
    def fingerprint(self) -> str | None:
        """A digest of the source's settings and the split sizes: the same settings generate the same samples."""
        settings = {k: v for k, v in vars(self.source).items() if isinstance(v, int | float | str | bool)}
        identity = {"source": type(self.source).__qualname__, **settings, "sizes": self.sizes}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]

    def setup(self, stage: str) -> None:
        """Build this rank's shards of the splits the stage needs."""
        self._find_rank()
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}[stage]
        for split in wanted:
            if split not in self._splits:
                self._splits[split] = self._build(split)

    def _build(self, split: str) -> tuple[Tensor, Tensor]:
        offsets = {"train": 0, "val": self.sizes["train"], "test": self.sizes["train"] + self.sizes["val"]}
        whole_split = split == "train" and self.global_order  # every rank holds it, slices each batch
        shard = shard_of(offsets[split], self.sizes[split], *((0, 1) if whole_split else (self._rank, self._world)))
        if split == "train" and self.sizes["train"] // self._world < self.local_batch_size:
            raise ConfigError(
                f"data.train_size={self.sizes['train']} gives each of {self._world} ranks fewer samples than one "
                f"batch of {self.local_batch_size}"
            )
        features, labels = self.source.samples(shard.start, shard.stop)
        device = self._device()
        return features.to(device), labels.to(device)

    def _device(self) -> torch.device:
        # Keeping the whole shard on the accelerator turns every batch into a free slice.
        if self.on_device and self.trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cpu")

    def reachable_accuracy(self, split: str = "val") -> float | None:
        """Best accuracy the source allows on this rank's shard of a split, where the source knows it."""
        if not hasattr(self.source, "nearest_centre_accuracy"):
            return None
        features, labels = self._splits[split]
        return self.source.nearest_centre_accuracy(features, labels)

    def _loader(self, split: str, train: bool) -> SliceBatchLoader:
        features, labels = self._splits[split]
        global_order = train and self.global_order
        return SliceBatchLoader(
            features,
            labels,
            self.local_batch_size,
            shuffle=train and self.shuffle,
            drop_last=train,
            seed=self.seed if global_order else self.seed + self._rank,
            rank=self._rank if global_order else 0,
            world=self._world if global_order else 1,
        )

    def val_dataloader(self) -> SliceBatchLoader:
        """Natural order, every sample of the shard."""
        return self._loader("val", train=False)

    def test_dataloader(self) -> SliceBatchLoader:
        """Natural order, every sample of the shard."""
        return self._loader("test", train=False)

"""The LightningDataModule for a prepared dataset (`data=dataset data.path=...`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from agent_lightning.data.base import Augmentation, RankBatchesDataModule
from agent_lightning.data.prepared import BlockBatchLoader, PreparedDataset
from agent_lightning.data.replay import ReplayMixLoader, check_fraction, check_replay_matches, replay_rows
from agent_lightning.errors import ConfigError

# auto: the train split's statistics, but a run started from `init_from` keeps the weights' own;
# standard: the train split's, always; none: none from the data (a new model sees raw observations,
# init_from's weights keep their own).
NORMALIZE = ("auto", "standard", "none")


class PreparedDataModule(RankBatchesDataModule):
    """Serves train/val/test batches of a prepared dataset, memory-mapped, each rank its own part.

    `batch_size` is the global batch, split across the data-parallel ranks. `normalize=auto|standard`
    standardises observations with the train split's statistics, inside the model (see `statistics`;
    under `auto` a model started from `init_from` keeps its own). `verify=True` checks every shard's
    SHA-256 before training. `replay={path, fraction}` mixes that fraction of every training batch from
    an older dataset's train split (see `data.replay`).
    """

    def __init__(
        self,
        path: str,
        batch_size: int = 512,
        normalize: str = "auto",
        verify: bool = False,
        shuffle: bool = True,
        block_rows: int = 8192,
        drop_last: bool = False,
        seed: int = 0,
        augmentations: Sequence[Augmentation] = (),
        replay: Mapping[str, Any] | None = None,
    ) -> None:
        if normalize not in NORMALIZE:
            raise ConfigError(f"data.normalize={normalize!r} is not one of {', '.join(NORMALIZE)}")
        if isinstance(block_rows, bool) or not isinstance(block_rows, int) or block_rows < 1:
            raise ConfigError(f"data.block_rows={block_rows!r} must be a whole number >= 1")
        dataset = PreparedDataset(path, verify=verify)
        super().__init__(batch_size, dataset.num_classes, augmentations)
        self.dataset = dataset
        if not self.dataset.rows("train"):
            raise ConfigError(
                f"data.path={path}: the train split is empty (a held-out set: score a checkpoint on it with "
                f"python -m agent_lightning.evaluate ckpt_path=<checkpoint> data=dataset data.path={path})"
            )
        self.normalize, self.shuffle = normalize, shuffle
        self.block_rows, self.drop_last, self.seed = block_rows, drop_last, seed
        replay = dict(replay or {})
        self.replay_fraction = check_fraction(replay.get("fraction", 0.0)) if replay.get("path") else 0.0
        self.replay_dataset: PreparedDataset | None = None
        if replay.get("path") and self.replay_fraction > 0:
            check_replay_matches(path, replay["path"])
            self.replay_dataset = PreparedDataset(replay["path"], verify=verify)

    @property
    def fingerprint(self) -> str | None:
        """The manifest's checksum of the dataset's shards."""
        return self.dataset.fingerprint or None

    @property
    def feature_names(self) -> list[str] | None:
        """The manifest's feature columns, in the order the model reads them."""
        return list(self.dataset.manifest.get("feature_names") or []) or None

    @property
    def class_names(self) -> list[str] | None:
        """The manifest's classes, in the order of their indices."""
        return list(self.dataset.class_names) or None

    @property
    def source_env(self) -> dict | None:
        """The env settings the rows were collected in (`collect`, `dagger`), from the manifest's provenance."""
        env = (self.dataset.manifest.get("provenance") or {}).get("env_config")
        return dict(env) if isinstance(env, dict) else None

    def split_rows(self, split: str) -> int:
        """Rows of a split (0 when the dataset has none)."""
        return self.dataset.rows(split)

    def statistics(self) -> tuple[Tensor, Tensor] | None:
        """The train split's (mean, std) to standardise observations with, or None for `normalize=none`."""
        return None if self.normalize == "none" else self.dataset.statistics()

    def _loader(self, split: str, train: bool) -> BlockBatchLoader | ReplayMixLoader:
        if not train or self.replay_dataset is None:
            return self._block_loader(self.dataset, split, self.local_batch_size, self.seed, train)
        old_rows = replay_rows(self.local_batch_size, self.replay_fraction, self.data_parallel_size)
        current = self._block_loader(self.dataset, "train", self.local_batch_size - old_rows, self.seed, True)
        # Its own seed stream: the old rows' order does not repeat the new rows' block order.
        replay = self._block_loader(self.replay_dataset, "train", old_rows, self.seed + 1_000_003, True)
        return ReplayMixLoader(current, replay)

    def _block_loader(
        self, dataset: PreparedDataset, split: str, batch_size: int, seed: int, train: bool
    ) -> BlockBatchLoader:
        return BlockBatchLoader(
            dataset.splits[split],
            batch_size,
            rank=self._rank,
            world=self._world,
            seed=seed,
            train=train,
            shuffle=self.shuffle,
            block_rows=self.block_rows,
            drop_last=self.drop_last,
            fingerprint=dataset.fingerprint,
        )

    def reachable_accuracy(self, split: str = "val") -> float | None:
        """Unknown for real data."""
        return None

"""Samples from the user's own shard files, read lazily so each rank loads only its own part.

A shard is a `.pt` file holding {"features": float tensor [N, num_features], "labels": int
tensor [N]} (written with `torch.save`) or a `.npz` file with arrays of those names. The shards,
in sorted path order, form one sequence of samples that the DataModule splits and shards.
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from agent_lightning.errors import ConfigError

SUFFIXES = (".pt", ".npz")


class FileSource:
    """Shard files matched by `paths` (a glob, a directory, or a list of either)."""

    def __init__(self, paths: str | list[str], num_features: int, num_classes: int) -> None:
        self.num_features = num_features
        self.num_classes = num_classes
        patterns = [paths] if isinstance(paths, str) else list(paths)
        files: list[Path] = []
        for pattern in patterns:
            path = Path(pattern)
            matched = sorted(path.glob("*")) if path.is_dir() else [Path(p) for p in sorted(glob.glob(pattern))]
            files += [f for f in matched if f.suffix in SUFFIXES]
        if not files:
            raise ConfigError(f"data.source.paths={paths!r} matches no {' or '.join(SUFFIXES)} file")
        self.files = files
        self.lengths = [len(self._read(f, check=False)[1]) for f in files]
        self.offsets = np.cumsum([0, *self.lengths]).tolist()

    def __len__(self) -> int:
        return self.offsets[-1]

    def _read(self, file: Path, check: bool = True) -> tuple[Tensor, Tensor]:
        try:
            if file.suffix == ".pt":
                # mmap: only the pages of the rows taken are read from disk.
                shard = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
                features, labels = shard["features"], shard["labels"]
            else:
                with np.load(file) as shard:
                    features, labels = torch.from_numpy(shard["features"]), torch.from_numpy(shard["labels"])
        except Exception as err:  # any unreadable shard: one message naming it
            raise ConfigError(f"shard {file} cannot be read as features/labels: {type(err).__name__}: {err}") from None
        if check:
            self._check(file, features, labels)
        return features, labels

    def _check(self, file: Path, features: Tensor, labels: Tensor) -> None:
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ConfigError(
                f"shard {file}: features have shape {tuple(features.shape)}, expected [N, {self.num_features}] "
                "(data.source.num_features)"
            )
        if labels.shape != (features.shape[0],):
            raise ConfigError(f"shard {file}: {len(labels)} labels for {len(features)} feature rows")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ConfigError(
                f"shard {file}: labels outside 0..{self.num_classes - 1} (data.source.num_classes={self.num_classes})"
            )

    def samples(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """Features (float32) and labels (int64) of samples `start` to `stop` - 1, reading only the shards needed."""
        parts_x, parts_y = [], []
        for file, lo, hi in zip(self.files, self.offsets[:-1], self.offsets[1:], strict=True):
            if hi <= start or lo >= stop:
                continue
            features, labels = self._read(file)
            take = slice(max(start, lo) - lo, min(stop, hi) - lo)
            parts_x.append(features[take].float())
            parts_y.append(labels[take].long())
        if not parts_x:
            return torch.empty(0, self.num_features), torch.empty(0, dtype=torch.long)
        return torch.cat(parts_x), torch.cat(parts_y)


def write_shards(features: Tensor, labels: Tensor, directory: str | Path, shard_size: int) -> list[Path]:
    """Save samples as `.pt` shards of `shard_size` rows (the format `FileSource` reads)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, lo in enumerate(range(0, len(features), shard_size)):
        path = directory / f"shard-{index:05d}.pt"
        torch.save(
            {"features": features[lo : lo + shard_size].clone(), "labels": labels[lo : lo + shard_size].clone()}, path
        )
        paths.append(path)
    return paths

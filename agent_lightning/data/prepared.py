"""Reading a prepared dataset: memory-mapped shards, and a block-shuffled batch loader over them.

Batches are copies of slices of whole blocks of contiguous rows (rows were shuffled once at write
time), taken in a seeded block order that changes every epoch: memory-mapped reads of contiguous
rows, no per-sample indexing, no worker processes. Pages of a block are handed back to the kernel
once the block is done, so a rank's resident memory stays flat whatever the dataset's size.
"""

from __future__ import annotations

import logging
import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from agent_lightning.data.manifest import SPLITS, check_shard_files, read_manifest
from agent_lightning.errors import ConfigError

log = logging.getLogger(__name__)
PAGE = mmap.PAGESIZE


@dataclass(frozen=True)
class Block:
    """Rows `lo` to `hi` - 1 of one shard."""

    shard: int
    lo: int
    hi: int


class SplitView:
    """One split's shards as one sequence of rows, opened memory-mapped on first use."""

    def __init__(self, directory: Path, name: str, manifest: dict[str, Any]) -> None:
        self.directory, self.name = directory, name
        self.num_features, self.num_classes = manifest["num_features"], manifest["num_classes"]
        self.shards = manifest["splits"][name]["shards"]
        self.rows = int(manifest["splits"][name]["rows"])
        self.offsets = np.cumsum([0, *(s["rows"] for s in self.shards)])
        self._open: dict[int, tuple[np.memmap, np.memmap]] = {}

    def arrays(self, shard: int) -> tuple[np.memmap, np.memmap]:
        """Features and labels of one shard, memory-mapped (checked against the manifest)."""
        if shard not in self._open:
            entry = self.shards[shard]
            x = self._map(entry["files"]["x"]["file"], (entry["rows"], self.num_features), np.float32)
            y = self._map(entry["files"]["y"]["file"], (entry["rows"],), np.int64)
            self._check_labels(entry["files"]["y"]["file"], y)
            self._open[shard] = (x, y)
        return self._open[shard]

    def _check_labels(self, name: str, labels: np.ndarray) -> None:
        # Once per shard and process (labels are small): a label shard altered in place keeps its size,
        # and an out-of-range label would otherwise fail deep inside the loss (or index another class).
        if not len(labels):
            return
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= self.num_classes:
            bad = low if low < 0 else high
            raise ConfigError(
                f"shard {self.directory / name} holds label {bad}, outside 0..{self.num_classes - 1} "
                f"(num_classes={self.num_classes} in its manifest): altered or corrupt; re-run prepare"
            )

    def groups(self, shard: int) -> np.memmap | None:
        """Group ids of one shard, where the dataset has groups."""
        files = self.shards[shard]["files"]
        return self._map(files["g"]["file"], (self.shards[shard]["rows"],), np.int64) if "g" in files else None

    def _map(self, name: str, shape: tuple[int, ...], dtype: type) -> np.memmap:
        path = self.directory / name
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as err:
            raise ConfigError(f"shard {path} cannot be read: {err}; re-run prepare") from None
        if array.shape != shape or array.dtype != dtype:
            raise ConfigError(
                f"shard {path} holds {array.dtype} {array.shape} but the manifest says {np.dtype(dtype)} {shape}"
            )
        return array

    def blocks(self, block_rows: int) -> list[Block]:
        """The split cut into blocks of at most `block_rows` rows, never crossing a shard."""
        return [
            Block(i, lo, min(lo + block_rows, s["rows"]))
            for i, s in enumerate(self.shards)
            for lo in range(0, s["rows"], block_rows)
        ]

    def read(self, block: Block, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Copies of rows `lo:hi` of a block (offsets inside the block)."""
        x, y = self.arrays(block.shard)
        return np.array(x[block.lo + lo : block.lo + hi]), np.array(y[block.lo + lo : block.lo + hi])

    def rows_of(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Copies of rows `start:stop` of the split, in stored order."""
        xs, ys = [], []
        for shard, (lo, hi) in enumerate(zip(self.offsets[:-1], self.offsets[1:], strict=True)):
            if hi > start and lo < stop:
                x, y = self.arrays(shard)
                xs.append(np.array(x[max(start, lo) - lo : min(stop, hi) - lo]))
                ys.append(np.array(y[max(start, lo) - lo : min(stop, hi) - lo]))
        if not xs:
            return np.empty((0, self.num_features), np.float32), np.empty(0, np.int64)
        return np.concatenate(xs), np.concatenate(ys)

    def release(self, block: Block) -> None:
        """Drop a block's pages from this process (the page cache keeps them): resident memory stays flat."""
        if block.shard not in self._open:
            return
        for array in self._open[block.shard]:
            handle = getattr(array, "_mmap", None)
            if handle is None or not hasattr(handle, "madvise"):
                continue
            row_bytes = array.strides[0]
            start = array.offset + block.lo * row_bytes
            stop = array.offset + block.hi * row_bytes
            start -= start % PAGE
            length = min(len(handle), stop) - start
            if length > 0:
                handle.madvise(mmap.MADV_DONTNEED, start, length)


class PreparedDataset:
    """A prepared dataset directory: its manifest, and its splits memory-mapped.

    Opening checks that every shard exists with the size the manifest records (a truncated shard
    is named here, not by numpy); `verify=True` also checks every shard's SHA-256.
    """

    def __init__(self, path: str | Path, verify: bool = False) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        check_shard_files(self.path, self.manifest, verify)
        self.num_features: int = self.manifest["num_features"]
        self.num_classes: int = self.manifest["num_classes"]
        self.class_names: list[str] = self.manifest.get("class_names", [])
        self.fingerprint: str = self.manifest.get("fingerprint", "")
        self.splits = {name: SplitView(self.path, name, self.manifest) for name in SPLITS}

    def rows(self, split: str) -> int:
        """Rows in a split."""
        return self.splits[split].rows

    def statistics(self) -> tuple[Tensor, Tensor]:
        """Per-feature mean and std of the train split."""
        stats = self.manifest["statistics"]
        return torch.tensor(stats["mean"], dtype=torch.float32), torch.tensor(stats["std"], dtype=torch.float32)


class _EpochSampler:
    """What Lightning talks to: `set_epoch` selects the epoch's block order."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at the start of each epoch."""
        self.epoch = epoch


class BlockBatchLoader:
    """Batches of one rank's part of a split, resumable mid-epoch.

    Training (`train=True`): each epoch the blocks are taken in a seeded shuffled order and read as
    one stream; global batch k is stream rows [k*B, (k+1)*B) and rank r takes its `batch_size` rows
    of it, so ranks are disjoint, every row is seen once per epoch and all ranks take
    ceil(rows / B) steps. The last global batch splits its remainder as evenly as possible; only when
    fewer rows than ranks are left do some ranks take one row from the epoch's start (never zero rows).
    Evaluation: each rank takes an equal contiguous part (the `rows % world` last rows are left
    out, so all ranks run as many batches), in stored order.
    """

    batch_sampler = None

    def __init__(
        self,
        split: SplitView,
        batch_size: int,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        train: bool = True,
        shuffle: bool = True,
        block_rows: int = 8192,
        drop_last: bool = False,
        fingerprint: str = "",
    ) -> None:
        self.split, self.batch_size, self.rank, self.world = split, batch_size, rank, world
        self.seed, self.train, self.shuffle, self.drop_last = seed, train, shuffle, drop_last
        self.fingerprint = fingerprint
        self.sampler = _EpochSampler()
        self.blocks = split.blocks(block_rows)
        self._lengths = np.array([b.hi - b.lo for b in self.blocks], dtype=np.int64)
        self._batches_served = 0
        self._resume_at = 0

    def __len__(self) -> int:
        rows = self.split.rows
        if not self.train:
            return -(-(rows // self.world) // self.batch_size)
        step = self.batch_size * self.world
        return rows // step if self.drop_last else -(-rows // step)

    def _order(self) -> np.ndarray:
        if not (self.train and self.shuffle):
            return np.arange(len(self.blocks))
        return np.random.default_rng([self.seed, self.sampler.epoch]).permutation(len(self.blocks))

    def _spans(self) -> Iterator[tuple[int, int]]:
        """(start, stop) stream positions of this rank's batches; stop may pass the end (wraps)."""
        rows, b = self.split.rows, self.batch_size
        if not self.train:
            part = rows // self.world
            base = self.rank * part
            for k in range(len(self)):
                yield base + k * b, base + min(part, (k + 1) * b)
            return
        step = b * self.world
        full = rows // step
        for k in range(len(self)):
            if k < full:
                start = k * step + self.rank * b
                yield start, start + b
            else:  # the remainder, shared as evenly as possible
                share, extra = divmod(rows - k * step, self.world)
                size = share + (self.rank < extra)
                start = k * step + self.rank * share + min(self.rank, extra)
                if size == 0:  # fewer rows left than ranks: one row from the epoch's start (stream wraps)
                    start, size = rows + self.rank - extra, 1
                yield start, start + size

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        # A generator: the epoch and resume point are read at the first batch, after Lightning
        # has called `set_epoch` and `load_state_dict`.
        start_batch, self._resume_at = self._resume_at, 0
        order = self._order()
        lengths = self._lengths[order]
        ends = np.cumsum(lengths)
        rows = int(ends[-1]) if len(ends) else 0
        released = 0  # blocks of `order` before this index are done with
        for k, (lo, hi) in enumerate(self._spans()):
            if k < start_batch:
                continue
            self._batches_served = k + 1
            xs, ys = [], []
            for a, z in ((lo, min(hi, rows)), (0, max(0, hi - rows))):  # the second part: wrapped rows
                while a < z:
                    i = int(np.searchsorted(ends, a, side="right"))
                    block_start = int(ends[i] - lengths[i])
                    take = min(z, int(ends[i])) - a
                    x, y = self.split.read(self.blocks[order[i]], a - block_start, a - block_start + take)
                    xs.append(x)
                    ys.append(y)
                    a += take
            # Blocks wholly before this batch will not be read again this epoch.
            done = int(np.searchsorted(ends, lo, side="right"))
            for i in range(released, done):
                self.split.release(self.blocks[order[i]])
            released = max(released, done)
            x = xs[0] if len(xs) == 1 else np.concatenate(xs)
            y = ys[0] if len(ys) == 1 else np.concatenate(ys)
            yield torch.from_numpy(x), torch.from_numpy(y)
        for i in range(released, len(order)):
            self.split.release(self.blocks[order[i]])

    def state_dict(self) -> dict[str, Any]:
        """Epoch, batches already served in it, and the dataset's fingerprint."""
        return {"epoch": self.sampler.epoch, "batches_served": self._batches_served, "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position; a position saved on other data starts a fresh epoch instead."""
        self.sampler.set_epoch(state["epoch"])
        if state.get("fingerprint", self.fingerprint) != self.fingerprint:
            log.warning("the checkpoint's data position is for another dataset: starting a fresh epoch")
            self._resume_at = 0
            return
        served = state["batches_served"]
        self._resume_at = served if served < len(self) else 0

"""Replay against forgetting: a fixed fraction of every training batch drawn from an older dataset.

`data=dataset data.path=NEW data.replay.path=OLD data.replay.fraction=0.2`: each rank's batch keeps
its size; `round(fraction x batch)` of its rows (at least one when the fraction is above 0) come from
OLD's train split, the rest from NEW. OLD is read by its own block loader (each rank its own rows,
seeded, a new shuffled order each time it is exhausted), so the mix is deterministic per seed,
disjoint across ranks, and its position is saved in every checkpoint with NEW's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from agent_lightning.data.manifest import read_manifest, schema_difference
from agent_lightning.data.prepared import BlockBatchLoader
from agent_lightning.errors import ConfigError


def replay_rows(batch_size: int, fraction: float, ranks: int = 1) -> int:
    """Rows of a rank's batch of `batch_size` taken from the replay data (0 when the fraction is 0).

    ConfigError when the batch cannot hold a new row and an old one (`ranks`: how many share the global batch).
    """
    if fraction <= 0:
        return 0
    if batch_size < 2:
        shared = f" over {ranks} data-parallel ranks" if ranks > 1 else ""
        raise ConfigError(
            f"data.replay.fraction={fraction} mixes old and new rows in every batch, but data.batch_size="
            f"{batch_size * ranks}{shared} leaves {batch_size} row per batch: give each rank's batch at least 2 rows"
        )
    return min(batch_size - 1, max(1, round(fraction * batch_size)))


def check_fraction(fraction: Any) -> float:
    """`data.replay.fraction` as a float in [0, 1); ConfigError otherwise."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction < 1:
        raise ConfigError(f"data.replay.fraction={fraction!r} must be a number >= 0 and < 1 (e.g. 0.2)")
    return float(fraction)


def check_replay_config(path: str | Path, replay: Any, batch_size: int) -> None:
    """`data.replay` is usable with `data.path` (checked before any rank starts); ConfigError otherwise."""
    fraction = check_fraction(replay.get("fraction", 0.0))
    if fraction > 0 and not replay.get("path"):
        raise ConfigError(
            f"data.replay.fraction={fraction} needs data.replay.path=<an older dataset written by prepare>"
        )
    if replay.get("path"):
        replay_rows(batch_size, fraction)  # each rank's share is checked again once the ranks are known
    if replay.get("path"):
        check_replay_matches(path, replay["path"])


def check_replay_matches(path: str | Path, replay_path: str | Path) -> None:
    """The replay dataset has the same feature width and classes as the dataset; ConfigError naming both."""
    current, old = read_manifest(path), read_manifest(replay_path, key="data.replay.path")
    differs = schema_difference(old, current, f"data.replay.path={replay_path}", f"data.path={path}")
    if differs:
        raise ConfigError(
            f"{differs}: replay needs datasets of the same columns and classes, in the same order (prepare both "
            "alike: features=, class_names=)"
        )
    if not old["splits"]["train"]["rows"]:
        raise ConfigError(f"data.replay.path={replay_path}: its train split is empty, nothing to replay")


class ReplayMixLoader:
    """Batches of the current loader with the replay loader's next batch appended (same total size).

    The replay loader runs on across the current loader's epochs, starting a new shuffled pass over
    the old rows each time it is exhausted.
    """

    batch_sampler = None

    def __init__(self, current: BlockBatchLoader, replay: BlockBatchLoader) -> None:
        self.current, self.replay = current, replay
        self.sampler = current.sampler  # Lightning sets the epoch of the current data
        self._replay_batches: Iterator[tuple[Tensor, Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.current)

    def _endless_replay(self) -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            yield from self.replay
            self.replay.sampler.set_epoch(self.replay.sampler.epoch + 1)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self._replay_batches is None:
            self._replay_batches = self._endless_replay()
        for features, labels in self.current:
            old_features, old_labels = next(self._replay_batches)
            yield torch.cat([features, old_features]), torch.cat([labels, old_labels])

    def state_dict(self) -> dict[str, Any]:
        """The current data's position, and the replay data's."""
        return {**self.current.state_dict(), "replay": self.replay.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue both where the checkpoint left them (a position without replay keeps replay at its start)."""
        self.current.load_state_dict(state)
        replay = state.get("replay")
        if replay is not None:
            if replay["batches_served"] >= len(self.replay):  # saved just as a pass over the old rows ended
                replay = {**replay, "epoch": replay["epoch"] + 1, "batches_served": 0}
            self.replay.load_state_dict(replay)
        self._replay_batches = None

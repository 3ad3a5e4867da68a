"""Online learning: `data=stream data.path=DIR` trains while producers add parts to DIR.

The run takes the stream's parts in order. While part k is the newest it trains on, every batch
samples the newest `window_rows` train rows of parts 0..k (with `replay.fraction`, that share of the
batch comes from the older rows, outside the window). Once `passes` x the window's rows have been
drawn, part k+1 becomes the head; when it has not arrived yet, the run waits for it (rank 0 polls DIR
every `poll_seconds`), and stops when the producer's end marker says there is none to come.
`trainer.max_steps` / `max_time` stop it too. A run that falls behind a fast producer works through
the backlog in order (logged), so the batches a run sees depend on the parts, not on their timing.
Validation runs every `val_every_steps` steps on the newest `val_rows` rows of those parts' val splits.

Ranks never decide on their own what DIR holds: rank 0 looks and broadcasts what it saw, at points
every rank reaches after the same number of steps, so a part arriving between two ranks' looks
cannot make them disagree; all ranks take the same steps and stop together. Rows are drawn by a
generator seeded with (seed, step), each rank taking its own slice of the global batch.
Normalisation: the first part's train statistics, for the whole run (saved in its checkpoints).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Timer
from torch import Tensor

from agent_lightning.data.base import Augmentation, RankBatchesDataModule
from agent_lightning.data.prepared import PreparedDataset, SplitView
from agent_lightning.data.replay import replay_rows
from agent_lightning.data.stream_dir import Look, check_stream_options, look, wait_for_first_part
from agent_lightning.errors import ConfigError

log = logging.getLogger("agent_lightning")


def agree(find: Any) -> Any:
    """`find()` on global rank 0, the same value on every rank (a collective: every rank must call it)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return find()
    box = [find() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class RowSpace:
    """One split of the visible parts as one sequence of rows (oldest part first), read by index."""

    def __init__(self, views: Sequence[SplitView], names: Sequence[str]) -> None:
        self.views, self.names = list(views), list(names)
        self.offsets = np.cumsum([0, *(v.rows for v in self.views)])

    @property
    def rows(self) -> int:
        """Rows in all parts together."""
        return int(self.offsets[-1])

    def part_of(self, index: np.ndarray) -> np.ndarray:
        """The part each row index falls in."""
        return np.searchsorted(self.offsets, index, side="right") - 1

    def gather(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the rows at `index` (in that order), read from the memory-mapped shards."""
        view = self.views[0] if self.views else None
        width = view.num_features if view is not None else 0
        x, y = np.empty((len(index), width), np.float32), np.empty(len(index), np.int64)
        parts = self.part_of(index)
        for part in np.unique(parts):
            where = np.flatnonzero(parts == part)
            local = index[where] - self.offsets[part]
            split = self.views[part]
            shards = np.searchsorted(split.offsets, local, side="right") - 1
            for shard in np.unique(shards):
                hit = where[shards == shard]
                rows = local[shards == shard] - split.offsets[shard]
                order = np.argsort(rows)  # ascending reads from the memory map
                features, labels = split.arrays(int(shard))
                x[hit[order]] = features[rows[order]]
                y[hit[order]] = labels[rows[order]]
        return x, y


class StreamTrainLoader:
    """Endless training batches from a growing stream directory (see the module docstring)."""

    batch_sampler = None

    def __init__(self, data: StreamDataModule) -> None:
        self.data = data
        self.steps = 0  # batches served, over the whole run
        self.window_drawn = 0  # window rows drawn since the window's head last moved
        self.drawn_per_part: dict[str, int] = {}
        # The state after each recent batch: Lightning fetches one batch ahead of the one it trains,
        # so a checkpoint must hold the state after the last *trained* batch, not the last served.
        self._after: dict[int, dict[str, Any]] = {}

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        data = self.data
        self._after = {self.steps: self._state()}
        while True:
            space = data.train_space
            window = min(data.window_rows, space.rows)
            if data.head == 0 or self.window_drawn >= data.passes * window:
                if not self._advance():
                    data.stop_training()
                    return
                continue
            yield self._batch(space, window)

    def _advance(self) -> bool:
        """Move the window's head to the next part, waiting for one if needed; False when the run should stop."""
        data = self.data
        if data.head == len(data.view.parts):
            data.wait_for_change()
        if data.view.stop:
            return False
        if data.head == len(data.view.parts):  # nothing new, and the stream ended
            log.info(
                "stream %s ended: %d parts, %d train rows, %d steps; rows drawn per part: %s",
                data.path,
                data.head,
                data.train_space.rows,
                self.steps,
                self.drawn_per_part,
            )
            return False
        data.move_head(data.head + 1)
        self.window_drawn = 0
        behind = len(data.view.parts) - data.head
        waiting = f" ({behind} more parts waiting)" if behind else ""
        log.info("stream %s: training on %s%s", data.path, data.view.parts[data.head - 1], waiting)
        return True

    def _batch(self, space: RowSpace, window: int) -> tuple[Tensor, Tensor]:
        data = self.data
        rng = np.random.default_rng([data.seed, self.steps])
        older = space.rows - window
        local_old = data.replay_local_rows if older > 0 else 0
        local_new = data.local_batch_size - local_old
        world, rank = data.data_parallel_size, data.data_parallel_rank
        new = rng.choice(window, size=local_new * world, replace=window < local_new * world) + older
        old = rng.choice(older, size=local_old * world, replace=older < local_old * world) if local_old else new[:0]
        # Bookkeeping from the global draw: every rank counts the same.
        parts, counts = np.unique(space.part_of(new), return_counts=True)
        for part, count in zip(parts, counts, strict=True):
            name = space.names[part]
            self.drawn_per_part[name] = self.drawn_per_part.get(name, 0) + int(count)
        self.window_drawn += len(new)
        self.steps += 1
        mine = np.concatenate(
            [new[rank * local_new : (rank + 1) * local_new], old[rank * local_old : (rank + 1) * local_old]]
        )
        x, y = space.gather(mine)
        self._after[self.steps] = self._state()
        self._after.pop(self.steps - 4, None)
        return torch.from_numpy(x), torch.from_numpy(y)

    def state_dict(self) -> dict[str, Any]:
        """Steps trained, the window's head, rows drawn from it and per part: where a resumed run goes on."""
        trainer = self.data.trainer
        if trainer is not None:
            trained = trainer.fit_loop.epoch_loop.batch_progress.total.processed
            if trained in self._after:
                return self._after[trained]
        return self._state()

    def _state(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "head": self.data.head,
            "window_drawn": self.window_drawn,
            "drawn_per_part": dict(self.drawn_per_part),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the stream from a checkpoint: same head part, step count and window use."""
        self.steps = int(state.get("steps", 0))
        self.window_drawn = int(state.get("window_drawn", 0))
        self.drawn_per_part = dict(state.get("drawn_per_part", {}))
        self.data.move_head(int(state.get("head", 0)))


class StreamEvalLoader:
    """The newest `val_rows` rows of a split of the parts visible at this point, each rank an equal part."""

    batch_sampler = None

    def __init__(self, data: StreamDataModule, split: str) -> None:
        self.data, self.split = data, split

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        space = self.data.space(self.split)
        rows = min(self.data.val_rows, space.rows)
        part = rows // self.data.data_parallel_size
        start = space.rows - rows + self.data.data_parallel_rank * part
        step = self.data.local_batch_size
        for lo in range(0, part, step):
            x, y = space.gather(np.arange(start + lo, start + min(part, lo + step)))
            yield torch.from_numpy(x), torch.from_numpy(y)


class StreamDataModule(RankBatchesDataModule):
    """Online training from a stream directory that producers add prepared parts to.

    `window_rows`: train rows sampled from, the newest first; `replay.fraction`: share of every
    batch from older rows; `passes`: window rows drawn (in units of the window) before waiting for
    new data; `val_rows` / `val_every_steps`: the held-out rows and how often they are evaluated;
    `poll_seconds`: how often rank 0 looks for new parts while waiting.
    """

    def __init__(
        self,
        path: str,
        batch_size: int = 512,
        window_rows: int = 65_536,
        replay: Mapping[str, Any] | None = None,
        passes: float = 1.0,
        val_rows: int = 8192,
        val_every_steps: int = 100,
        poll_seconds: float = 1.0,
        normalize: str = "auto",
        seed: int = 0,
        augmentations: Sequence[Augmentation] = (),
    ) -> None:
        options = {"window_rows": window_rows, "val_rows": val_rows, "val_every_steps": val_every_steps}
        options |= {"batch_size": batch_size, "passes": passes, "poll_seconds": poll_seconds}
        check_stream_options({**options, "replay": dict(replay or {}), "normalize": normalize})
        first = wait_for_first_part(path, poll_seconds)
        super().__init__(batch_size, int(first["num_classes"]), augmentations)
        self.path, self.first = Path(path), first
        self.window_rows, self.passes, self.val_rows = window_rows, float(passes), val_rows
        self.val_every_steps = val_every_steps
        self.poll_seconds = float(poll_seconds)
        self.replay_fraction = float(dict(replay or {}).get("fraction", 0.0))
        self.normalize, self.seed = normalize, seed
        self.view = Look(parts=(), ended=False)
        self.head = 0  # parts trained on so far: the window ends with part `head - 1`
        self._datasets: dict[str, PreparedDataset] = {}
        self._spaces: dict[str, RowSpace] = {}
        self._train_loader: StreamTrainLoader | None = None

    @property
    def replay_local_rows(self) -> int:
        """Rows of each rank's batch drawn from older data, when there is any."""
        return replay_rows(self.local_batch_size, self.replay_fraction, self.data_parallel_size)

    # --- what the ranks agree on --------------------------------------------------------------------

    def look_now(self) -> Look:
        """Rank 0's look at the directory (with a stop request when the run's time is up)."""
        seen = look(self.path)
        return Look(seen.parts, seen.ended, stop=self._time_up())

    def see(self, view: Look) -> None:
        """Adopt a view every rank agreed on; opens the parts that are new in it."""
        for name in view.parts:
            if name not in self._datasets:
                self._datasets[name] = PreparedDataset(self.path / name)
        if view.parts[: self.head] != self.view.parts[: self.head]:
            raise ConfigError(f"data.path={self.path}: parts trained on have disappeared from the stream")
        self.view = view

    def stop_training(self) -> None:
        """The stream is done (every rank decides alike): the batch in flight is the last, then a final validation."""
        if self.trainer is not None:
            self.trainer.should_stop = True

    def move_head(self, head: int) -> None:
        """Train on the parts up to `head` (the window ends with the last of them)."""
        if head > len(self.view.parts):
            raise ConfigError(
                f"data.path={self.path}: the checkpoint trained on {head} parts but the stream has "
                f"{len(self.view.parts)}: resume on the stream directory the run was following"
            )
        if head != self.head:
            self.head = head
            self._spaces.clear()

    def wait_for_change(self) -> None:
        """Wait (polling, one log line) until the ranks agree on a new part, the end marker, or time up."""
        before, logged, first = self.view.parts, False, True
        while True:
            self.see(agree(self.look_now if first else self._look_after_sleep))
            first = False
            if self.view.parts != before or self.view.ended or self.view.stop:
                return
            if not logged:
                log.info(
                    "stream %s: trained up to %s, waiting for the next part (polling every %gs)",
                    self.path,
                    before[-1] if before else "nothing",
                    self.poll_seconds,
                )
                logged = True

    def _look_after_sleep(self) -> Look:
        time.sleep(self.poll_seconds)
        return self.look_now()

    def _time_up(self) -> bool:
        trainer = self.trainer
        if trainer is None:
            return False
        if trainer.should_stop:
            return True
        timers = [c for c in trainer.callbacks if isinstance(c, Timer)]
        remaining = timers[0].time_remaining() if timers else None
        return remaining is not None and remaining <= 0

    def space(self, split: str) -> RowSpace:
        """A split of the parts trained on so far as one row sequence."""
        if split not in self._spaces:
            names = self.view.parts[: self.head]
            self._spaces[split] = RowSpace([self._datasets[n].splits[split] for n in names], names)
        return self._spaces[split]

    @property
    def train_space(self) -> RowSpace:
        """The train split of the parts trained on so far."""
        return self.space("train")

    # --- Lightning hooks ----------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Find this rank's place, agree with the other ranks on the parts visible now, start on the first."""
        self._find_rank()
        self.see(agree(self.look_now))
        self.move_head(max(self.head, 1))

    @property
    def feature_names(self) -> list[str] | None:
        """The first part's feature columns (every part has them alike), in the order the model reads them."""
        return list(self.first.get("feature_names") or []) or None

    @property
    def class_names(self) -> list[str] | None:
        """The first part's classes (every part names them alike), in the order of their indices."""
        return list(self.first.get("class_names") or []) or None

    def split_rows(self, split: str) -> int:
        """Rows of a split in the first part: whether the stream has that split at all (all ranks decide alike)."""
        return int(self.first["splits"][split]["rows"])

    def statistics(self) -> tuple[Tensor, Tensor] | None:
        """The first part's train statistics for the whole run (or None for `normalize=none`)."""
        if self.normalize == "none":
            return None
        stats = self.first["statistics"]
        return torch.tensor(stats["mean"], dtype=torch.float32), torch.tensor(stats["std"], dtype=torch.float32)

    def adapt_trainer(self, trainer: pl.Trainer) -> None:
        """Epochs mean nothing here: the stream (or max_steps / max_time) ends the run, validated every N steps."""
        trainer.callbacks.append(StreamProgress(self))
        trainer.fit_loop.max_epochs = -1  # a resumed run goes on whatever epoch count its checkpoint holds
        trainer.fit_loop.min_epochs = 0  # lets the end of the stream stop it with a final validation
        trainer.val_check_interval = self.val_every_steps
        trainer.check_val_every_n_epoch = None  # count steps across the (single) epoch

    def train_dataloader(self) -> StreamTrainLoader:
        """The endless training batches of this rank, continuing a resumed run's step count."""
        self._train_loader = StreamTrainLoader(self)
        if self._train_position is not None:
            self._train_loader.load_state_dict(self._train_position)
            self._train_position = None
        return self._train_loader

    def _loader(self, split: str, train: bool) -> StreamEvalLoader:
        return StreamEvalLoader(self, split)

    def reachable_accuracy(self, split: str = "val") -> float | None:
        """Unknown for real data."""
        return None


class StreamProgress(pl.Callback):
    """Logs where the run is in the stream: `stream/head_part` (parts trained on) and `stream/train_rows`."""

    def __init__(self, data: StreamDataModule) -> None:
        self.data = data

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Log the stream's position; at `trainer.max_steps`, stop with a final validation."""
        if 0 <= trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True
        pl_module.log("stream/head_part", float(self.data.head), on_step=True, on_epoch=False)
        pl_module.log("stream/train_rows", float(self.data.train_space.rows), on_step=True, on_epoch=False)

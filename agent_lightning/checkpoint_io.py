"""Checkpoint writing that never leaves a half-written checkpoint in place of the last good one.

- A single file is written to `<name>.tmp` and renamed over `<name>` (atomic on POSIX file systems).
- A sharded (directory) checkpoint is written to `<name>.tmp/` by all ranks, then rank 0 moves the
  old directory to `<name>.old/`, renames the new one into place and deletes the old one. Each rename
  is atomic; between the two, `<name>` is briefly missing and `<name>.old/` holds the previous
  checkpoint: `clean_stale_writes` (run when a run starts in that directory) renames it back.
- A single file is flushed to disk (fsync) before its rename, and the directory after it, so a power
  cut leaves the previous checkpoint or the new one, never an empty file under the name (sharded
  checkpoints: torch.distributed.checkpoint syncs each shard file itself).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.strategies import ModelParallelStrategy

from agent_lightning.replacing import remove_path, replace_directory, replace_file, restore_aside, sync_to_disk

STAGING_SUFFIX = ".tmp"
PREVIOUS_SUFFIX = ".old"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file and renames it into place.

    A run killed while saving keeps the previous `last.ckpt` intact instead of a truncated one.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        """Save `checkpoint` to `path` atomically."""
        path = Path(path)
        tmp = path.with_name(path.name + STAGING_SUFFIX)
        super().save_checkpoint(checkpoint, tmp, storage_options)
        replace_file(tmp, path)


def clean_stale_writes(directory: str | Path) -> list[Path]:
    """Remove what a killed write left in `directory`; restore a checkpoint caught between two renames.

    Only call this while holding the run directory's lock: then no other run is writing here.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    cleaned = []
    for entry in sorted(directory.iterdir()):
        if entry.name.endswith(PREVIOUS_SUFFIX):
            target = entry.with_name(entry.name.removesuffix(PREVIOUS_SUFFIX))
            restored = not target.exists()  # the new checkpoint never arrived: keep the previous one
            restore_aside(entry, target)
            if not restored:
                cleaned.append(entry)
        elif entry.name.endswith(STAGING_SUFFIX):
            remove_path(entry)
            cleaned.append(entry)
    return cleaned


class AtomicModelParallelStrategy(ModelParallelStrategy):
    """Lightning's `ModelParallelStrategy` whose sharded checkpoints replace the previous one atomically.

    Lightning writes a distributed checkpoint directory in place (it bypasses the CheckpointIO
    plugin), so a run killed mid-save would leave a mix of old and new shards.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: _PATH, storage_options: Any | None = None) -> None:
        """Write all ranks' shards to `<path>.tmp/`, then rename it over `<path>` on rank 0."""
        if not self._save_distributed_checkpoint:
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        target = Path(self.broadcast(filepath))
        staged = target.with_name(target.name + STAGING_SUFFIX)
        if self.global_rank == 0:
            remove_path(staged)
        self.barrier("atomic_checkpoint_staging")
        super().save_checkpoint(checkpoint, staged, storage_options)
        self.barrier("atomic_checkpoint_written")
        if self.global_rank == 0:
            replace_directory(staged, target, target.with_name(target.name + PREVIOUS_SUFFIX))
            sync_to_disk(target.parent)
        self.barrier("atomic_checkpoint_renamed")

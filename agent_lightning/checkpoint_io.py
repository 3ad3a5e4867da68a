"""Checkpoint writing that never leaves a half-written file behind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file and renames it into place.

    A run killed while saving keeps the previous `last.ckpt` intact instead of a truncated one.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        """Save `checkpoint` to `path` atomically."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)

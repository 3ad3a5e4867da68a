"""Data: sample sources, prepared datasets and the DataModules that shard and batch them."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_HOMES = {
    "AgentDataModule": "datamodule",
    "BlockBatchLoader": "prepared",
    "ClusterTask": "synthetic",
    "PreparedDataModule": "dataset_module",
    "PreparedDataset": "prepared",
    "ReplayMixLoader": "replay",
    "SliceBatchLoader": "loader",
    "StreamDataModule": "stream",
    "StreamWriter": "stream_dir",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    # Imported on first use: `prepare` reads and writes datasets without loading Lightning.
    if name not in _HOMES:
        raise AttributeError(f"module 'agent_lightning.data' has no attribute {name!r}")
    return getattr(import_module(f"agent_lightning.data.{_HOMES[name]}"), name)

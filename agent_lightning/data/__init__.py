"""Data: sample sources, prepared datasets and the DataModules that shard and batch them."""

from agent_lightning.data.datamodule import AgentDataModule
from agent_lightning.data.dataset_module import PreparedDataModule
from agent_lightning.data.loader import SliceBatchLoader
from agent_lightning.data.prepared import BlockBatchLoader, PreparedDataset
from agent_lightning.data.synthetic import ClusterTask

__all__ = [
    "AgentDataModule",
    "BlockBatchLoader",
    "ClusterTask",
    "PreparedDataModule",
    "PreparedDataset",
    "SliceBatchLoader",
]

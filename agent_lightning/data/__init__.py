"""Data: sample sources and the DataModule that shards and batches them."""

from agent_lightning.data.datamodule import AgentDataModule
from agent_lightning.data.loader import SliceBatchLoader
from agent_lightning.data.synthetic import ClusterTask

__all__ = ["AgentDataModule", "ClusterTask", "SliceBatchLoader"]

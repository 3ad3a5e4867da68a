"""Data: sample sources and the DataModule that shards and batches them."""

from agent_lightning.data.datamodule import AgentDataModule
from agent_lightning.data.files import FileSource, write_shards
from agent_lightning.data.loader import SliceBatchLoader
from agent_lightning.data.synthetic import ClusterTask

__all__ = ["AgentDataModule", "ClusterTask", "FileSource", "SliceBatchLoader", "write_shards"]

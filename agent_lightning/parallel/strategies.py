"""The Lightning strategy a config asks for, and each rank's place along the data-parallel dimension."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, Strategy
from omegaconf import DictConfig

from agent_lightning.errors import ConfigError
from agent_lightning.parallel.degrees import SHARDED, STRATEGIES, resolve_degrees


def data_parallel_coords(trainer: pl.Trainer) -> tuple[int, int]:
    """(rank, number of ranks) along the data-parallel dimension: who gets which shard.

    Ranks of one tensor-parallel group share a data-parallel rank, so they get the same batches.
    """
    strategy = trainer.strategy
    if isinstance(strategy, ModelParallelStrategy):
        mesh = strategy.device_mesh["data_parallel"]
        return mesh.get_local_rank(), mesh.size()
    return trainer.global_rank, trainer.world_size


def build_strategy(strategy_cfg: DictConfig, world: int) -> Strategy | str:
    """Turn `cfg.strategy` into what `Trainer(strategy=...)` takes."""
    name = strategy_cfg.name
    backend = strategy_cfg.get("process_group_backend") or None  # None: gloo on CPU, nccl on CUDA
    if name == "single":
        return "auto"  # one process; Lightning picks the device from `trainer.accelerator`
    if name == "ddp":
        return DDPStrategy(
            process_group_backend=backend,
            find_unused_parameters=strategy_cfg.get("find_unused_parameters", False),
            gradient_as_bucket_view=strategy_cfg.get("gradient_as_bucket_view", True),
            static_graph=strategy_cfg.get("static_graph", False),
        )
    if name in SHARDED:
        degrees = resolve_degrees(strategy_cfg, world)
        from agent_lightning.checkpoint_io import AtomicModelParallelStrategy

        # Lightning's FSDPStrategy refuses CPU; ModelParallelStrategy runs FSDP2 on CPU and CUDA alike
        # (its subclass here only makes the sharded checkpoint write atomic).
        return AtomicModelParallelStrategy(
            data_parallel_size=degrees.data_parallel,
            tensor_parallel_size=degrees.tensor_parallel,
            save_distributed_checkpoint=True,
            process_group_backend=backend,
        )
    raise ConfigError(f"strategy.name={name!r} is not one of {', '.join(STRATEGIES)}")

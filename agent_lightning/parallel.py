"""How the model is placed: which Lightning strategy runs it and how ranks divide the work."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.strategies import DDPStrategy, Strategy
from omegaconf import DictConfig

STRATEGIES = ("single", "ddp")


def data_parallel_coords(trainer: pl.Trainer) -> tuple[int, int]:
    """(rank, number of ranks) along the data-parallel dimension: who gets which shard."""
    return trainer.global_rank, trainer.world_size


def build_strategy(strategy_cfg: DictConfig) -> Strategy | str:
    """Turn `cfg.strategy` into what `Trainer(strategy=...)` takes."""
    name = strategy_cfg.name
    if name == "single":
        # Lightning picks the device from `accelerator`; one process, no process group.
        return "auto"
    if name == "ddp":
        kwargs: dict[str, Any] = {
            "find_unused_parameters": strategy_cfg.get("find_unused_parameters", False),
            "gradient_as_bucket_view": strategy_cfg.get("gradient_as_bucket_view", True),
            "static_graph": strategy_cfg.get("static_graph", False),
        }
        backend = strategy_cfg.get("process_group_backend")
        if backend:
            kwargs["process_group_backend"] = backend  # otherwise gloo on CPU, nccl on CUDA
        return DDPStrategy(**kwargs)
    raise ValueError(f"strategy.name={name!r} is not one of {STRATEGIES}")


__all__ = ["STRATEGIES", "build_strategy", "data_parallel_coords"]

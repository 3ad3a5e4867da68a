"""Sharding a model over a device mesh with the model's own plan: tensor parallel, then FSDP2.

A model that can be split says how: `tensor_parallel_plan(degree)` (its column/row-wise layers) and
`parallel_blocks()` (its repeated blocks: FSDP's units, what activation checkpointing recomputes);
see `AgentMLP`.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from agent_lightning.errors import ConfigError


def tensor_parallel_plan(model: nn.Module, degree: int) -> dict[str, Any]:
    """The model's own plan for `degree` tensor-parallel ranks; a ConfigError where it has none or it cannot split."""
    plan = getattr(model, "tensor_parallel_plan", None)
    if not callable(plan):
        raise ConfigError(
            f"strategy=model_parallel with tensor_parallel > 1 needs a model with a tensor_parallel_plan; "
            f"{type(model).__name__} has none: use strategy=fsdp or strategy.tensor_parallel=1"
        )
    try:
        return plan(degree)
    except ValueError as err:
        raise ConfigError(f"strategy=model_parallel: {err}") from None


def _blocks(model: nn.Module) -> nn.Sequential | None:
    blocks = getattr(model, "parallel_blocks", None)
    return blocks() if callable(blocks) else None


def apply_parallelism(model: nn.Module, mesh: Any, strategy_cfg: DictConfig) -> None:
    """Shard `model` in place: tensor parallel over mesh['tensor_parallel'], then FSDP2 over mesh['data_parallel']."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
    from torch.distributed.tensor.parallel import parallelize_module

    tp_mesh, dp_mesh = mesh["tensor_parallel"], mesh["data_parallel"]
    if tp_mesh.size() > 1:
        parallelize_module(model, tp_mesh, tensor_parallel_plan(model, tp_mesh.size()))

    container = _blocks(model)
    if container is not None and strategy_cfg.get("activation_checkpointing", False):
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        for index, block in enumerate(container):
            container[index] = checkpoint_wrapper(block)  # recompute activations in backward
    blocks = list(container) if container is not None else []

    offload = strategy_cfg.get("offload", False)  # CUDA only: checked up front by `validate`
    param_dtype = strategy_cfg.get("param_dtype")
    mp_policy = MixedPrecisionPolicy(
        param_dtype=getattr(torch, param_dtype) if param_dtype else None,
        reduce_dtype=torch.float32 if param_dtype else None,
    )
    shard_options: dict[str, Any] = {
        "mesh": dp_mesh,
        "reshard_after_forward": strategy_cfg.get("reshard_after_forward", True),
        "mp_policy": mp_policy,
        "offload_policy": CPUOffloadPolicy() if offload else OffloadPolicy(),
    }
    if dp_mesh.size() == 1 and tp_mesh.size() > 1:
        return  # pure tensor parallelism: nothing to shard across data-parallel ranks
    for block in blocks:  # one unit per block: only one block's full parameters exist at a time (else: one unit)
        fully_shard(block, **shard_options)
    fully_shard(model, **shard_options)


def is_parallelized(model: nn.Module) -> bool:
    """Whether `apply_parallelism` already ran on this model (configure_model runs per stage)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())

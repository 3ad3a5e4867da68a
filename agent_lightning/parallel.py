"""How the model is placed: which Lightning strategy runs it and how the model is sharded.

Every strategy runs the same `AgentMLP` and data. `single` and `ddp` replicate the model;
`fsdp` and `model_parallel` use Lightning's `ModelParallelStrategy`, which builds a 2-D device
mesh (data_parallel x tensor_parallel) and calls `AgentModule.configure_model`, where
`apply_parallelism` shards the model: tensor parallelism (DTensor) over the `tensor_parallel`
mesh dimension, then FSDP2 (`fully_shard`) over the `data_parallel` dimension.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, Strategy
from omegaconf import DictConfig
from torch import nn

from agent_lightning.errors import ConfigError

STRATEGIES = ("single", "ddp", "fsdp", "model_parallel", "auto")
SHARDED = ("fsdp", "model_parallel")
# fp32 weights + gradients + Adam's two moments.
TRAINING_BYTES_PER_PARAM = 16


def choose_strategy(
    num_params: int, devices: int, num_nodes: int, device_bytes: int, fraction: float
) -> tuple[str, str]:
    """The simplest strategy whose per-device training state fits `fraction` of a device, and why."""
    world = devices * num_nodes
    state = num_params * TRAINING_BYTES_PER_PARAM
    budget = fraction * device_bytes
    gib = 2**30
    facts = (
        f"training state {state / gib:.2f} GiB ({num_params:,} parameters), budget {budget / gib:.2f} GiB per device"
    )
    if world == 1:
        fits = "fits" if state <= budget else "does NOT fit: add devices (fsdp) or use strategy.offload on CUDA"
        return "single", f"one device; {facts}: {fits}"
    if state <= budget:
        return "ddp", f"{facts}: a full replica fits on each of {world} devices"
    if state / world <= budget:
        return "fsdp", f"{facts}: only 1/{world} of it fits, so shard it across {world} devices"
    return "model_parallel", (
        f"{facts}: even 1/{world} is tight, so split layers across the {devices} devices of a node (tensor "
        f"parallel) and shard across {num_nodes} node(s)"
    )


def cpu_processes_per_node(devices: int) -> tuple[int, str]:
    """How many processes `strategy=auto` starts per CPU node, and why: one, using every core.

    Ranks on one host split its cores, so each rank's GEMMs shrink while the gradient all-reduce
    (gloo) and a second copy of the per-step Python work are added to every step: on a 2-core host
    a DDP step of the reference model took 2.6x as long as one process's (`benchmarks/ddp_cpu.py`,
    docs/speed.md). Ranks across nodes still add cores, so nodes stay data-parallel.
    """
    if devices <= 1:
        return devices, ""
    return 1, (
        f"devices={devices} CPU ranks on one host would split its cores and add an all-reduce per step, which was "
        "slower than one process using every core (docs/speed.md): running one process per node"
    )


@dataclass(frozen=True)
class Degrees:
    """Parallel degrees: data-parallel ranks x tensor-parallel ranks = world size."""

    data_parallel: int
    tensor_parallel: int


def resolve_degrees(strategy_cfg: DictConfig, world: int) -> Degrees:
    """Degrees of a strategy for `world` ranks; -1 fills the remainder; a mismatch is a ConfigError."""
    name = strategy_cfg.name
    if name not in SHARDED:
        return Degrees(world, 1)
    dp = strategy_cfg.get("data_parallel", -1)
    tp = 1 if name == "fsdp" else strategy_cfg.get("tensor_parallel", -1)
    for key, value in (("data_parallel", dp), ("tensor_parallel", tp)):
        if isinstance(value, bool) or not isinstance(value, int) or value == 0 or value < -1:
            raise ConfigError(f"strategy.{key}={value!r} is invalid: use a whole number >= 1, or -1 for the rest")
    if dp == -1 and tp == -1:
        tp = 1 if name == "fsdp" else world
    if dp == -1:
        dp = world // tp if world % tp == 0 else -1
    if tp == -1:
        tp = world // dp if world % dp == 0 else -1
    if dp < 1 or tp < 1 or dp * tp != world:
        asked_dp, asked_tp = strategy_cfg.get("data_parallel", -1), strategy_cfg.get("tensor_parallel", 1)
        raise ConfigError(
            f"strategy={name}: dp({asked_dp}) x tp({asked_tp}) != world size {world} (devices x num_nodes): "
            f"choose degrees whose product is {world}"
        )
    return Degrees(dp, tp)


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


def _linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def tensor_parallel_plan(model: nn.Module) -> dict[str, Any]:
    """Column-wise then row-wise Linear pairs: each pair needs a single all-reduce.

    A column-wise layer leaves its output features sharded, the activation (and dropout) works on
    the shards, and the row-wise layer after it consumes them and sums partial results. An odd
    last layer stays replicated.
    """
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    layers = _linear_layers(model)
    plan: dict[str, Any] = {}
    for index in range(0, len(layers) - 1, 2):
        plan[layers[index][0]] = ColwiseParallel()
        plan[layers[index + 1][0]] = RowwiseParallel()
    return plan


def check_tensor_parallel(model: nn.Module, tensor_parallel: int) -> None:
    """Refuse models the column/row plan cannot split evenly, naming the layer and the fix."""
    if any(isinstance(m, nn.LayerNorm | nn.BatchNorm1d) for m in model.modules()):
        raise ConfigError("strategy=model_parallel with tensor_parallel > 1 needs model.norm=none")
    for name, layer in _linear_layers(model)[:-1:2]:
        if layer.out_features % tensor_parallel:
            raise ConfigError(
                f"layer {name} has {layer.out_features} outputs, not divisible by tensor_parallel={tensor_parallel}"
            )


def apply_parallelism(model: nn.Module, mesh: Any, strategy_cfg: DictConfig) -> None:
    """Shard `model` in place: tensor parallel over mesh['tensor_parallel'], then FSDP2 over mesh['data_parallel']."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
    from torch.distributed.tensor.parallel import parallelize_module

    tp_mesh, dp_mesh = mesh["tensor_parallel"], mesh["data_parallel"]
    if tp_mesh.size() > 1:
        check_tensor_parallel(model, tp_mesh.size())
        parallelize_module(model, tp_mesh, tensor_parallel_plan(model))

    blocks = list(getattr(model, "hidden", []))
    if strategy_cfg.get("activation_checkpointing", False):
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        for index, block in enumerate(blocks):
            model.hidden[index] = checkpoint_wrapper(block)  # recompute activations in backward
        blocks = list(model.hidden)

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
    for block in blocks:  # one unit per block: only one block's full parameters exist at a time
        fully_shard(block, **shard_options)
    fully_shard(model, **shard_options)


def is_parallelized(model: nn.Module) -> bool:
    """Whether `apply_parallelism` already ran on this model (configure_model runs per stage)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())

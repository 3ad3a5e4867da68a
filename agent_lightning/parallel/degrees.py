"""Which strategy and how many ranks in each parallel dimension: read from the config, checked up front.

Nothing here imports Lightning: a bad value is refused before the training libraries load.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

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
        asked_dp, asked_tp = (
            strategy_cfg.get("data_parallel", -1),
            1 if name == "fsdp" else strategy_cfg.get("tensor_parallel", -1),
        )
        raise ConfigError(
            f"strategy={name}: dp({asked_dp}) x tp({asked_tp}) != world size {world} (devices x num_nodes): "
            f"choose degrees whose product is {world}"
        )
    return Degrees(dp, tp)

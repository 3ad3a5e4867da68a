"""How one optimisation step runs: the options Lightning's automatic loop would own, and the optimizer kernel.

The module optimises manually (one forward, backward and optimizer step, no closure), so
`trainer.gradient_clip_val`, `trainer.gradient_clip_algorithm` and `trainer.accumulate_grad_batches`
are taken out of the Trainer's arguments (Lightning refuses them under manual optimization) and
applied by the module itself; `trainer.compile`, `trainer.compile_mode` and `trainer.steps_per_execution` are ours too.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from agent_lightning.data.fitting import is_stream_config
from agent_lightning.errors import ConfigError

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CLIP_ALGORITHMS = ("norm", "value")
# torch.compile of the step runs with these strategies; the sharded ones (DTensor parameters) are refused.
COMPILE_STRATEGIES = ("single", "ddp")
AUTO = "auto"  # trainer.steps_per_execution: chosen per run (see agent_lightning/step_groups.py)


@dataclass(frozen=True)
class StepOptions:
    """The step's own settings, read from the `trainer` config group."""

    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str = "norm"
    compile: bool = False
    compile_mode: str = "default"
    steps_per_execution: int | str = 1  # "auto" until `resolve_steps_per_execution` picks a number

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for the module's hyperparameters."""
        return asdict(self)


STEP_KEYS = tuple(StepOptions.__dataclass_fields__)


def step_options(trainer_cfg: DictConfig) -> StepOptions:
    """The step options in `cfg.trainer` (absent keys keep their defaults); a bad value is a ConfigError."""
    if "steps_per_execution" in trainer_cfg and trainer_cfg.steps_per_execution is None:
        raise ConfigError("trainer.steps_per_execution=None is invalid: use a whole number >= 1 or auto")
    values = {key: trainer_cfg[key] for key in STEP_KEYS if trainer_cfg.get(key) is not None}
    for key in ("accumulate_grad_batches", "steps_per_execution"):
        count = values.get(key, 1)
        if key == "steps_per_execution" and count == AUTO:
            continue
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            also = " or auto" if key == "steps_per_execution" else ""
            raise ConfigError(f"trainer.{key}={count!r} is invalid: use a whole number >= 1{also}")
    clip = values.get("gradient_clip_val")
    if clip is not None:
        if isinstance(clip, bool) or not isinstance(clip, int | float) or not math.isfinite(clip) or clip < 0:
            raise ConfigError(f"trainer.gradient_clip_val={clip!r} is invalid: use a number > 0, or null for none")
        values["gradient_clip_val"] = float(clip) if clip > 0 else None  # 0 means off, as in Lightning
    if values.get("gradient_clip_algorithm", "norm") not in CLIP_ALGORITHMS:
        raise ConfigError(
            f"trainer.gradient_clip_algorithm={values['gradient_clip_algorithm']!r} is not one of "
            f"{', '.join(CLIP_ALGORITHMS)}"
        )
    if not isinstance(values.get("compile", False), bool):
        raise ConfigError(f"trainer.compile={values['compile']!r} is invalid: use true or false")
    if values.get("compile_mode", "default") not in COMPILE_MODES:
        raise ConfigError(f"trainer.compile_mode={values['compile_mode']!r} is not one of {', '.join(COMPILE_MODES)}")
    return StepOptions(**values)


def check_step_options(cfg: DictConfig) -> StepOptions:
    """Check the step options against the run (strategy), before any rank starts."""
    options = step_options(cfg.trainer)
    strategy = cfg.strategy.get("name")
    if options.compile and strategy not in COMPILE_STRATEGIES:
        raise ConfigError(
            f"trainer.compile=true is not supported with strategy={strategy} (sharded DTensor parameters): "
            f"use strategy={' or '.join(COMPILE_STRATEGIES)}, or trainer.compile=false"
        )
    grouped = options.steps_per_execution != AUTO and options.steps_per_execution > 1
    if grouped and is_stream_config(cfg.data):
        raise ConfigError(
            f"trainer.steps_per_execution={options.steps_per_execution} is not supported with data=stream "
            "(it decides between steps which parts are visible): use 1"
        )
    if grouped:
        check_batch_counts(cfg.trainer, options.steps_per_execution)
    return options


# Trainer keys that count training batches; Lightning counts them in its own steps, which hold a group each.
BATCH_COUNTED_KEYS = ("limit_train_batches", "val_check_interval", "overfit_batches")


def _batch_count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None  # a float is a fraction


def check_batch_counts(trainer_cfg: DictConfig, steps: int, checkpoint: str = "") -> None:
    """A ConfigError unless each whole-number batch count is a multiple of `steps`, the batches per Lightning step.

    `checkpoint`: the resumed checkpoint whose grouping `steps` is (a resume cannot change it).
    """
    for key in BATCH_COUNTED_KEYS:
        count = _batch_count(trainer_cfg.get(key))
        if count is not None and count % steps:
            lower, higher = count // steps * steps, (count // steps + 1) * steps
            use = f"use {lower} or {higher}" if lower else f"use {higher}"
            grouped = f"ckpt_path={checkpoint} was written" if checkpoint else "this run trains"
            otherwise = "" if checkpoint else ", or trainer.steps_per_execution=1"
            raise ConfigError(
                f"trainer.{key}={count} is not a multiple of {steps}: {grouped} with trainer.steps_per_execution="
                f"{steps} (Lightning counts groups of {steps} batches): {use}{otherwise}"
            )


# Keys of `cfg.trainer` applied by this package rather than by Lightning's Trainer.
# Applied by `train` around the run: torch.set_num_threads (runs/threads.py), torch.set_float32_matmul_precision.
NOT_TRAINER_KEYS = (*STEP_KEYS, "threads", "float32_matmul_precision")
# Trainer arguments the run passes itself (`fit.build_trainer`), and where a user sets what they control.
SET_BY_THE_RUN = {
    "devices": "set devices=N instead",
    "num_nodes": "set num_nodes=N instead",
    "strategy": "choose strategy=<auto|ddp|fsdp|model_parallel|single> instead",
    "callbacks": "add or remove them in the callbacks group (+callbacks.<name>={_target_: ...}, ~callbacks.<name>)",
    "logger": "choose logger=<option> instead (logger=none: no logger)",
    "enable_checkpointing": "remove its checkpoint callbacks: ~callbacks.best_checkpoint ~callbacks.last_checkpoint",
    "plugins": "it writes its checkpoints atomically through a plugin of its own",
    "barebones": "its guards, checkpoints and logs are the callbacks and loggers barebones would turn off",
}


def check_trainer_keys(trainer_cfg: DictConfig) -> None:
    """ConfigError for a `trainer.*` key the run sets itself: Lightning would never see the user's value."""
    for key, advice in SET_BY_THE_RUN.items():
        if key in trainer_cfg:
            raise ConfigError(f"trainer.{key} is set by the run itself: {advice}")


def lightning_trainer_config(trainer_cfg: DictConfig) -> DictConfig:
    """What `lightning.pytorch.Trainer` is given: `cfg.trainer` without the keys this package applies itself.

    With `steps_per_execution` K > 1, each whole-number batch count (`BATCH_COUNTED_KEYS`) is passed in
    Lightning's steps: groups of K batches.
    """
    container = OmegaConf.to_container(trainer_cfg, resolve=True)
    assert isinstance(container, dict)
    steps = container.get("steps_per_execution", 1)
    if isinstance(steps, int) and steps > 1:  # batches, as the user counts them, to Lightning's groups of them
        for key in BATCH_COUNTED_KEYS:
            count = _batch_count(container.get(key))
            if count is not None:
                container[key] = count // steps
    return OmegaConf.create({key: value for key, value in container.items() if key not in NOT_TRAINER_KEYS})


def estimated_optimizer_steps(num_batches: int | float, accumulate: int, max_epochs: int, max_steps: int) -> int:
    """Optimizer steps of the whole run, counting an epoch's last partial accumulation as a step (as Lightning)."""
    if num_batches == float("inf"):
        return max_steps
    steps = math.ceil(num_batches / accumulate) * max(max_epochs, 1)
    return min(steps, max_steps) if max_steps != -1 else steps


def _accepts(factory: Callable[..., Any], name: str) -> bool:
    target = getattr(factory, "func", factory)
    try:
        return name in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


def with_fast_kernel(
    factory: Callable[..., torch.optim.Optimizer], model: nn.Module, fused: bool = True
) -> Callable[..., Any]:
    """The optimizer factory set to its fused kernel (one kernel for all tensors) where possible.

    torch's default on CPU is a Python loop over parameters. Fused needs plain (non-DTensor)
    floating-point parameters on CPU or CUDA; sharded models keep torch's default. With `fused=False`
    (see `fused_allowed`) plain parameters get the `foreach` kernels instead. A user's explicit `fused`
    / `foreach` in the optimizer config wins.
    """
    keywords = getattr(factory, "keywords", {}) or {}
    if "fused" in keywords or "foreach" in keywords:
        return factory
    from torch.distributed.tensor import DTensor

    params = [p for p in model.parameters() if p.requires_grad]
    plain = all(
        not isinstance(p, DTensor) and p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params
    )
    if plain and fused and _accepts(factory, "fused"):
        return _with_keywords(factory, fused=True)
    if plain and _accepts(factory, "foreach"):
        return _with_keywords(factory, foreach=True)
    return factory  # torch's default: foreach on tensor-parallel DTensors fails on CPU


def _with_keywords(factory: Callable[..., Any], **keywords: Any) -> functools.partial[Any]:
    # One flat partial: Hydra's deferred target is not a functools.partial, so wrapping it would hide its
    # keywords (and their OmegaConf containers) from `build_optimizer`.
    func = getattr(factory, "func", factory)
    own = dict(getattr(factory, "keywords", None) or {})
    return functools.partial(func, *getattr(factory, "args", ()), **{**own, **keywords})


def fused_allowed(options: StepOptions, precision_plugin: Any) -> bool:
    """Whether the step may use a fused optimizer: not when clipping under mixed precision.

    A fused optimizer unscales gradients inside its step, so Lightning's mixed-precision plugin refuses
    to clip them (also for bf16, which has nothing to unscale).
    """
    from lightning.pytorch.plugins.precision import MixedPrecision

    return options.gradient_clip_val is None or not isinstance(precision_plugin, MixedPrecision)


# Hooks Lightning runs around a manual backward and optimizer step. `AgentModule` defines only
# `on_before_optimizer_step` (clipping), which the plain step calls itself.
_STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


def plain_step_possible(trainer: Any) -> bool:
    """Whether a step may call backward and the optimizer directly: nothing of Lightning's would run around them.

    True when no callback implements a backward/optimizer-step hook, the precision plugin scales no
    loss (no 16-mixed GradScaler) and the strategy's optimizer step is Lightning's plain one.
    """
    from lightning.pytorch import Callback
    from lightning.pytorch.plugins.precision import MixedPrecision, Precision
    from lightning.pytorch.strategies import DDPStrategy, Strategy

    precision = trainer.precision_plugin
    if type(precision) not in (Precision, MixedPrecision) or getattr(precision, "scaler", None) is not None:
        return False
    if type(trainer.strategy).optimizer_step not in (Strategy.optimizer_step, DDPStrategy.optimizer_step):
        return False
    if getattr(trainer.strategy, "_model_averager", None) is not None:
        return False
    return not any(
        getattr(type(callback), hook) is not getattr(Callback, hook)
        for callback in trainer.callbacks
        for hook in _STEP_HOOKS
    )

"""Optimizer parameter groups and LR schedules that need to know the run's length."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from agent_lightning.errors import ConfigError


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight matrices decay, biases and norm scales (1-D tensors) do not; one group when nothing decays.

    One group is one fused optimizer kernel per step instead of two.
    """
    params = [param for param in model.parameters() if param.requires_grad]
    if not weight_decay:
        return [{"params": params, "weight_decay": 0.0}]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def _plain(value: Any) -> Any:
    # OmegaConf containers would end up in the optimizer's state (param_groups) and so in every
    # checkpoint, which `torch.load(weights_only=True)` then refuses: pass plain lists and dicts.
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value


def build_optimizer(factory: Callable[..., torch.optim.Optimizer], model: nn.Module) -> torch.optim.Optimizer:
    """Call a Hydra partial optimizer on the model's parameter groups, decaying weights only."""
    keywords = {key: _plain(value) for key, value in getattr(factory, "keywords", {}).items()}
    weight_decay = keywords.get("weight_decay", 0.0) or 0.0
    if isinstance(factory, functools.partial):
        factory = functools.partial(factory.func, *factory.args, **keywords)
    return factory(params=parameter_groups(model, weight_decay))


def build_scheduler(factory: Callable[..., Any], optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """Call a Hydra partial scheduler; a `total_steps: null` argument gets the run's optimizer steps."""
    keywords = getattr(factory, "keywords", {})
    if "total_steps" in keywords and keywords["total_steps"] is None:
        if not math.isfinite(total_steps):
            name = getattr(getattr(factory, "func", factory), "__name__", "this scheduler")
            # Known only once the trainer counts the run's steps: reported as a config error all the same.
            raise ConfigError(
                f"scheduler {name} plans its steps over the run's length, which this run does not know (data=stream "
                "without trainer.max_steps): set trainer.max_steps, or use a scheduler without a fixed length"
            )
        return factory(optimizer=optimizer, total_steps=int(total_steps))
    return factory(optimizer=optimizer)


def _warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps  # the peak is reached at the last warm-up step
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps + 1) / decay_steps)  # 1.0 at the last step
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> LRScheduler:
    """Linear warm-up to the optimizer's LR over `warmup_steps`, then cosine decay to `min_lr_ratio` x LR."""
    if not 0 <= warmup_steps < total_steps:
        # Known only once the trainer counts the run's steps: reported as a config error all the same.
        raise ConfigError(
            f"scheduler.warmup_steps={warmup_steps} is invalid: use a number >= 0 and below this run's {total_steps} "
            "optimizer steps (or train longer: trainer.max_epochs)"
        )
    factor = functools.partial(
        _warmup_cosine_factor, warmup_steps=warmup_steps, total_steps=total_steps, min_lr_ratio=min_lr_ratio
    )
    return LambdaLR(optimizer, factor)

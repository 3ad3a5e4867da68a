"""Checks a composed config before any process starts, so mistakes cost one clear line."""

from __future__ import annotations

import math
import os
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from agent_lightning.errors import ConfigError
from agent_lightning.parallel import STRATEGIES, check_tensor_parallel, resolve_degrees
from agent_lightning.tracking import check_run_identity


def available_devices(accelerator: str) -> tuple[str, int]:
    """(kind, count) of devices that `trainer.accelerator` resolves to on this machine."""
    wants_gpu = accelerator in ("auto", "gpu", "cuda")
    if wants_gpu and torch.cuda.is_available():
        return "cuda", torch.cuda.device_count()
    if accelerator in ("gpu", "cuda"):
        raise ConfigError(f"trainer.accelerator={accelerator!r} but no CUDA device is available; use 'cpu' or 'auto'")
    # One CPU rank per core: more would only oversubscribe the cores.
    return "cpu", len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_devices(cfg: DictConfig) -> int:
    """Devices per node as an int; 'auto' means every GPU, or one CPU process."""
    kind, count = available_devices(str(cfg.trainer.accelerator))
    devices = cfg.devices
    if devices == "auto":
        return count if kind == "cuda" else 1
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ConfigError(f"devices={devices!r} is invalid: use a whole number >= 1 or 'auto'")
    # Under an external launcher (torchrun, SLURM) other nodes' devices are not visible here.
    if devices > count and not launched_externally():
        raise ConfigError(f"devices={devices} but this machine has {count} {kind} device(s): use 1..{count}")
    return devices


def launched_externally() -> bool:
    """True when torchrun or SLURM (srun, one task per device) already started one process per rank."""
    if "LOCAL_RANK" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ:
        return True
    return "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1


def _positive_number(cfg: DictConfig, key: str) -> None:
    value = cfg
    for part in key.split("."):
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{key}={value!r} is invalid: it must be a positive number")


def validate(cfg: DictConfig) -> tuple[int, int]:
    """Raise ConfigError naming the first bad key; return (devices per node, total number of ranks)."""
    check_run_identity(cfg)
    name = cfg.strategy.get("name")
    if name not in STRATEGIES or name == "auto":  # auto is resolved before validation
        raise ConfigError(f"strategy.name={name!r} is not one of {', '.join(STRATEGIES)}")
    devices = resolve_devices(cfg)
    num_nodes = cfg.num_nodes
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        raise ConfigError(f"num_nodes={num_nodes!r} is invalid: use a whole number >= 1")
    world = devices * num_nodes
    if num_nodes > 1 and not launched_externally():
        endpoint = str(cfg.get("rdzv_endpoint") or "")
        if not endpoint.rpartition(":")[2].isdigit() or endpoint.endswith(":0"):
            raise ConfigError(
                f"num_nodes={num_nodes} needs rdzv_endpoint=HOST:PORT, the same on every node "
                "(HOST: the first node's address), or an external launcher (torchrun, srun)"
            )
    offload = cfg.strategy.get("offload", False)
    if offload and available_devices(str(cfg.trainer.accelerator))[0] != "cuda":
        raise ConfigError(
            "strategy.offload=true keeps parameters in host memory and streams them to the GPU: it needs CUDA, "
            "and this run is on CPU"
        )
    if name == "single" and world > 1:
        raise ConfigError(
            f"strategy=single runs on one device but devices={devices} num_nodes={num_nodes}: use strategy=ddp"
        )
    degrees = resolve_degrees(cfg.strategy, world)
    if degrees.tensor_parallel > 1:  # the same check the sharding runs, before any rank starts
        with torch.device("meta"):
            check_tensor_parallel(hydra.utils.instantiate(cfg.model), degrees.tensor_parallel)
    data_parallel = degrees.data_parallel
    _positive_number(cfg, "optimizer.lr")
    batch = cfg.data.batch_size
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"data.batch_size={batch!r} is invalid: it must be a whole number >= 1")
    if batch % data_parallel:
        raise ConfigError(
            f"data.batch_size={batch} (global) is not divisible by the {data_parallel} data-parallel ranks: "
            f"use a multiple of {data_parallel}"
        )
    # A sharded strategy saves a distributed checkpoint: a directory.
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).exists():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path} does not exist")
    return devices, world

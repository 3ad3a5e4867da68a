"""Checks a composed config before any process starts, so mistakes cost one clear line.

This module is the one place for config checks, on purpose rather than typed structured-config
schemas: a schema checks types, but most mistakes here are ranges (betas in [0, 1)), choices that
depend on the group picked (`scheduler.gamma` of step vs exponential), combinations (batch size vs
ranks, checkpoint vs strategy) and files (a checkpoint's layers vs the model); groups also accept
any `_target_`, so one schema per option would not cover user classes. `RULES` lists every value
check as data: key, test, and what is valid.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from agent_lightning import safe_load
from agent_lightning.arguments import Rule
from agent_lightning.errors import ConfigError
from agent_lightning.parallel.degrees import SHARDED, STRATEGIES, Degrees, resolve_degrees
from agent_lightning.parallel.sharding import tensor_parallel_plan
from agent_lightning.runs.data_schema import check_same_schema, saved_schema
from agent_lightning.runs.identity import check_run_identity
from agent_lightning.runs.init_from import check_init_from
from agent_lightning.runs.lock import global_rank
from agent_lightning.runs.loop_progress import epochs_done, fit_loop_state
from agent_lightning.runs.matmul import MATMUL_PRECISIONS
from agent_lightning.step import check_trainer_keys

# As Lightning sets on import (these checks run before it loads): count GPUs through NVML, so that asking
# does not initialise CUDA in this process, which a process forked from it (a DataLoader worker) could not use.
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")


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


def _check_clipping_with_tensor_parallel(cfg: DictConfig, model: Any, plan: dict[str, Any], degrees: Degrees) -> None:
    # Pure tensor parallelism leaves the layers outside the plan as plain tensors, and torch's gradient
    # norm (and clamp) cannot take split and plain gradients together: it fails on a rank, mid-run.
    clip = cfg.trainer.get("gradient_clip_val")
    if not clip or degrees.data_parallel > 1:
        return
    whole = [name for name, _ in model.named_parameters() if not any(name.startswith(f"{key}.") for key in plan)]
    if whole:
        layer = whole[0].rsplit(".", 1)[0]
        raise ConfigError(
            f"trainer.gradient_clip_val={clip} with strategy=model_parallel (tensor_parallel="
            f"{degrees.tensor_parallel}, data_parallel=1): layer {layer} is not split by the model's plan, and "
            "torch cannot clip split and whole gradients together: use a model whose plan splits every layer "
            "(AgentMLP: an odd model.num_layers), or no clipping"
        )


def validate(cfg: DictConfig) -> tuple[int, int]:
    """Raise ConfigError naming the first bad key; return (devices per node, total number of ranks)."""
    check_run_identity(cfg)
    name = cfg.strategy.get("name")
    if name not in STRATEGIES or name == "auto":  # auto is resolved before validation
        raise ConfigError(f"strategy.name={name!r} is not one of {', '.join(STRATEGIES)}")
    check_values(cfg)
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
    optimizer = str((cfg.get("optimizer") or {}).get("_target_", ""))
    if name in SHARDED and optimizer.startswith("pytorch_optimizer."):  # fails on a rank, mid-step (tried: LAMB)
        raise ConfigError(
            f"optimizer {optimizer} does not work on the sharded (DTensor) parameters of strategy={name}: use "
            "optimizer=adam, adamw or sgd (torch's own), or strategy=ddp"
        )
    precision = str(cfg.trainer.get("precision"))
    if name in SHARDED and precision in ("16-mixed", "16"):  # Lightning's ModelParallelStrategy refuses it
        raise ConfigError(
            f"trainer.precision={precision} does not work with strategy={name}: use bf16-mixed (or 32-true), or "
            "strategy=ddp for 16-mixed"
        )
    if name == "single" and world > 1:
        raise ConfigError(
            f"strategy=single runs on one device but devices={devices} num_nodes={num_nodes}: use strategy=ddp"
        )
    degrees = resolve_degrees(cfg.strategy, world)
    if degrees.tensor_parallel > 1:  # the model's own plan, as the sharding will ask for it, before any rank starts
        with torch.device("meta"):
            model = hydra.utils.instantiate(cfg.model)
        _check_clipping_with_tensor_parallel(cfg, model, tensor_parallel_plan(model, degrees.tensor_parallel), degrees)
    data_parallel = degrees.data_parallel
    batch = cfg.data.batch_size
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"data.batch_size={batch!r} is invalid: it must be a whole number >= 1")
    if batch % data_parallel:
        raise ConfigError(
            f"data.batch_size={batch} (global) is not divisible by the {data_parallel} data-parallel ranks: "
            f"use a multiple of {data_parallel}"
        )
    replay = cfg.data.get("replay") or {}
    if replay.get("path") and _number(replay.get("fraction")) and replay["fraction"] > 0:
        from agent_lightning.data.replay import replay_rows

        replay_rows(batch // data_parallel, float(replay["fraction"]), data_parallel)  # room for old and new rows
    check_output_dir(cfg)
    check_init_from(cfg)
    if cfg.get("ckpt_path"):
        check_resume_checkpoint(cfg)
    return devices, world


_MISSING = object()


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def between(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Callable[[Any], bool]:
    """A number in the interval [low, high] (either end open if asked)."""

    def check(value: Any) -> bool:
        if not _number(value):
            return False
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return above and below

    return check


def whole_at_least(low: int, also: tuple[Any, ...] = ()) -> Callable[[Any], bool]:
    """A whole number >= low, or one of `also` (e.g. -1 or None)."""
    return lambda value: value in also if not _whole(value) else (value >= low or value in also)


def one_of(*choices: Any) -> Callable[[Any], bool]:
    """Exactly one of `choices`."""
    return lambda value: any(value == c and type(value) is type(c) for c in choices)


def _betas(value: Any) -> bool:
    return (
        isinstance(value, list | tuple | ListConfig)
        and len(value) == 2
        and all(between(0, 1, False, True)(b) for b in value)
    )


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _limit(value: Any) -> bool:  # Lightning: a fraction of the batches, or a whole number of them (None: all)
    if value is None:
        return True
    return between(0, 1)(value) if isinstance(value, float) else whole_at_least(0)(value)


def _limit_train(value: Any) -> bool:  # as `_limit`, but 0 would train nothing and still report test metrics
    return value is None or (_limit(value) and value != 0)


def _max_time(value: Any) -> bool:  # Lightning: "DD:HH:MM:SS", or {days, hours, minutes, seconds}
    if value is None:
        return True
    if isinstance(value, str):
        return re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", value) is not None
    if not isinstance(value, Mapping) or not value:
        return False
    return set(value) <= {"days", "hours", "minutes", "seconds"} and all(_number(v) for v in value.values())


def _val_interval(value: Any) -> bool:  # Lightning: a fraction of the epoch, or every N training batches
    if value is None:
        return True
    return between(0, 1, low_open=True)(value) if isinstance(value, float) else whole_at_least(1)(value)


POSITIVE = between(0, math.inf, low_open=True)
FRACTION_OPEN = between(0, 1, low_open=True, high_open=True)
BOOLEAN = one_of(True, False)
# Switches read as truthy or falsy (`data.shuffle=no` is the string "no": true); each must be a boolean.
SWITCHES = (
    "test",
    "print_config",
    "data.shuffle",
    "data.on_device",
    "data.global_order",
    "data.drop_last",
    "data.verify",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.use_distributed_sampler",
    "trainer.detect_anomaly",
    "strategy.find_unused_parameters",
    "strategy.gradient_as_bucket_view",
    "strategy.static_graph",
    "strategy.offload",
    "strategy.reshard_after_forward",
    "strategy.activation_checkpointing",
)
RULES: tuple[Rule, ...] = (
    *(Rule(key, BOOLEAN, "true or false") for key in SWITCHES),
    Rule("trainer.deterministic", one_of(True, False, "warn"), "true, false or warn"),
    Rule("trainer.benchmark", one_of(True, False, None), "true, false or null (keep torch's setting)"),
    Rule("trainer.fast_dev_run", lambda v: v is True or v is False or whole_at_least(1)(v), "true, false or n >= 1"),
    Rule("seed", lambda v: _whole(v) and 0 <= v < 2**32, "a whole number in [0, 4294967295]"),
    Rule("optimizer.lr", POSITIVE, "a positive number"),
    Rule("optimizer.weight_decay", between(0, math.inf), "a number >= 0"),
    Rule("optimizer.betas", _betas, "two numbers in [0, 1), e.g. [0.9, 0.999]"),
    Rule("optimizer.momentum", between(0, 1, high_open=True), "a number in [0, 1)"),
    Rule("optimizer.eps", POSITIVE, "a positive number"),
    Rule("optimizer.nesterov", BOOLEAN, "true or false"),
    Rule("loss.label_smoothing", between(0, 1), "a number in [0, 1]"),
    Rule("model.hidden_dim", whole_at_least(1), "a whole number >= 1"),
    Rule("model.num_layers", whole_at_least(1), "a whole number >= 1"),
    Rule("model.input_dim", whole_at_least(1, also=(None,)), "a whole number >= 1 (or null: from the data)"),
    Rule("model.output_dim", whole_at_least(1, also=(None,)), "a whole number >= 1 (or null: from the data)"),
    Rule("model.dropout", between(0, 1, high_open=True), "a number in [0, 1)"),
    Rule("scheduler.interval", one_of("step", "epoch"), "'step' or 'epoch'"),
    Rule("scheduler.step_size", whole_at_least(1), "a whole number of epochs >= 1"),
    Rule("scheduler.gamma", between(0, 1, low_open=True), "a number in (0, 1]: the factor the LR is multiplied by"),
    Rule("scheduler.T_max", whole_at_least(1), "a whole number of epochs >= 1"),
    Rule("scheduler.eta_min", between(0, math.inf), "a number >= 0"),
    Rule("scheduler.warmup_steps", whole_at_least(0), "a whole number of steps >= 0"),
    Rule("scheduler.min_lr_ratio", between(0, 1), "a number in [0, 1]"),
    Rule("scheduler.pct_start", FRACTION_OPEN, "a number in (0, 1)"),
    Rule("scheduler.factor", FRACTION_OPEN, "a number in (0, 1)"),
    Rule("scheduler.patience", whole_at_least(0), "a whole number >= 0"),
    Rule("trainer.max_epochs", whole_at_least(1, also=(-1, None)), "a whole number >= 1 (or -1: use max_steps)"),
    Rule("trainer.max_steps", whole_at_least(1, also=(-1,)), "a whole number >= 1, or -1 (no limit)"),
    Rule("trainer.min_epochs", whole_at_least(0, also=(None,)), "a whole number >= 0"),
    Rule("trainer.log_every_n_steps", whole_at_least(1), "a whole number >= 1"),
    Rule("trainer.check_val_every_n_epoch", whole_at_least(1, also=(None,)), "a whole number >= 1 (or null)"),
    Rule("trainer.accumulate_grad_batches", whole_at_least(1), "a whole number >= 1"),
    Rule("trainer.gradient_clip_val", _optional(between(0, math.inf)), "a number >= 0 (or null: no clipping)"),
    Rule("trainer.limit_val_batches", _limit, "a fraction in [0.0, 1.0] or a whole number of batches"),
    Rule("trainer.limit_train_batches", _limit_train, "a fraction in (0.0, 1.0] or a whole number of batches >= 1"),
    Rule("trainer.max_time", _max_time, "DD:HH:MM:SS, e.g. 00:12:00:00, or {hours: 12} (or null: no limit)"),
    Rule("data.train_size", whole_at_least(1), "a whole number of rows >= 1"),
    Rule(
        "data.val_size", whole_at_least(1), "a whole number of rows >= 1 (no validation: trainer.limit_val_batches=0)"
    ),
    Rule("data.test_size", whole_at_least(1), "a whole number of rows >= 1 (no test: test=false)"),
    Rule("augment.noise.std", between(0, math.inf), "a number >= 0"),
    Rule("augment.mask.p", between(0, 1, high_open=True), "a number in [0, 1)"),
    Rule("augment.mixup.alpha", POSITIVE, "a positive number"),
    Rule("trainer.val_check_interval", _val_interval, "a fraction in (0.0, 1.0] of an epoch or a whole number >= 1"),
    Rule("trainer.limit_test_batches", _limit, "a fraction in [0.0, 1.0] or a whole number of batches"),
    Rule("trainer.num_sanity_val_steps", whole_at_least(-1), "a whole number >= -1 (-1: all)"),
    Rule("trainer.accelerator", one_of("auto", "cpu", "gpu", "cuda", "mps"), "auto, cpu, gpu (cuda) or mps"),
    Rule("trainer.threads", whole_at_least(1, also=(None,)), "a whole number >= 1 (or null: decide from the cores)"),
    Rule(
        "trainer.float32_matmul_precision",
        one_of(None, *MATMUL_PRECISIONS),
        "highest, high or medium (or null: torch's default, highest)",
    ),
    Rule(
        "trainer.precision",
        one_of("32-true", "32", 32, "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true", "64", 64),
        "one of 32-true, 16-mixed, bf16-mixed, bf16-true, 16-true, 64-true",
    ),
    Rule("strategy.param_dtype", one_of(None, "float32", "bfloat16", "float16"), "null, float32, bfloat16 or float16"),
    Rule("strategy.memory_fraction", between(0, 1, low_open=True), "a number in (0, 1]"),
    Rule("callbacks.last_checkpoint.every_n_train_steps", whole_at_least(0), "a whole number of steps >= 0 (0: off)"),
    Rule("callbacks.early_stopping.patience", whole_at_least(0), "a whole number of validations >= 0"),
    Rule("callbacks.divergence.factor", _optional(between(1, math.inf, low_open=True)), "a number > 1 (or null: off)"),
    Rule("callbacks.divergence.window", whole_at_least(1), "a whole number of checks >= 1"),
    Rule("callbacks.divergence.patience", whole_at_least(1, also=(None,)), "a whole number of checks >= 1 (or null)"),
    Rule("callbacks.divergence.check_every_n_steps", whole_at_least(1), "a whole number of steps >= 1"),
)


# What `AgentModule` and `env_eval` log in the namespaces they own: another name there is a typo, found now rather
# than after an epoch (a monitor) or after every trial of a search (`optimized_metric`). Other names are left alone.
FIT_METRICS = ("val/acc", "val/acc_best", "val/loss", "train/acc", "train/loss_epoch", "train/loss")
ENV_STATS = ("return_mean", "return_std", "return_min", "return_max", "success_rate", "length_mean")
FINAL_METRICS = ("test/acc", "test/loss", *(f"env/{stat}" for stat in ENV_STATS))
OWNED_NAMESPACES = ("val/", "train/", "test/", "env/")
# Logged by each validation, before the training epoch's own metrics: what a trial can report for pruning.
VALIDATED_METRICS = tuple(name for name in FIT_METRICS if name.startswith("val/"))


def pruning_monitor(cfg: DictConfig, direction: str = "maximize") -> str:
    """The metric an Optuna trial reports for pruning after each validation.

    `optuna_trial.monitor`, else the optimized metric where each validation logs it (so the pruner ranks
    trials as the study does), else the validation metric better the study's way (val/acc or val/loss).
    """
    monitor = (cfg.get("optuna_trial") or {}).get("monitor")
    if monitor:
        return str(monitor)
    metric = cfg.get("optimized_metric")
    if metric in VALIDATED_METRICS:
        return str(metric)
    return "val/loss" if direction == "minimize" else "val/acc"


def check_direction(metric_key: str, metric: str, direction_key: str, direction: str) -> None:
    """ConfigError when a search's `direction` (maximize/minimize, or Ray's max/min) ranks `metric` upside down."""
    wanted = metric_direction(metric)
    if wanted is None or wanted == {"max": "maximize", "min": "minimize"}.get(direction, direction):
        return
    fix = wanted if direction in ("maximize", "minimize") else wanted[:3]
    raise ConfigError(
        f"{direction_key}={direction} but {metric_key}={metric} is better "
        f"{'higher' if wanted == 'maximize' else 'lower'}: use {direction_key}={fix}"
    )


def metric_direction(name: str) -> str | None:
    """`maximize` or `minimize` for a metric this package logs whose better side its name tells; None otherwise."""
    if name.endswith("loss"):
        return "minimize"
    if name.endswith(("acc", "acc_best", "return_mean", "return_min", "return_max", "success_rate")):
        return "maximize"
    return None


def _check_metric_names(cfg: DictConfig) -> None:
    """Monitors and `optimized_metric` that name a metric of this package's namespaces name one it logs."""
    callbacks = cfg.get("callbacks") or {}
    for name in ("best_checkpoint", "early_stopping"):
        monitor = (callbacks.get(name) or {}).get("monitor")
        if isinstance(monitor, str) and monitor.startswith(OWNED_NAMESPACES) and monitor not in FIT_METRICS:
            raise ConfigError(
                f"callbacks.{name}.monitor={monitor!r} is not a metric the run logs while it trains: use one of "
                f"{', '.join(FIT_METRICS)}"
            )
    monitor = (cfg.get("optuna_trial") or {}).get("monitor")
    if isinstance(monitor, str) and monitor.startswith(OWNED_NAMESPACES) and monitor not in VALIDATED_METRICS:
        raise ConfigError(
            f"optuna_trial.monitor={monitor!r} is not a metric each validation logs: use one of "
            f"{', '.join(VALIDATED_METRICS)}"
        )
    metric = cfg.get("optimized_metric")
    if isinstance(metric, str) and metric.startswith(OWNED_NAMESPACES) and metric not in FIT_METRICS + FINAL_METRICS:
        raise ConfigError(
            f"optimized_metric={metric!r} is not a metric the run logs: use one of {', '.join(FIT_METRICS)}, "
            f"{', '.join(FINAL_METRICS[:2])} (with test=true) or env/return_mean, env/success_rate, ... (with env_eval)"
        )


def check_values(cfg: DictConfig) -> None:
    """Raise ConfigError for the first value in `RULES` that is set and invalid, naming key and valid range."""
    for rule in RULES:
        value = OmegaConf.select(cfg, rule.key, default=_MISSING)
        if value is _MISSING:
            continue  # this choice (e.g. scheduler=none) has no such key
        if isinstance(value, ListConfig):
            value = OmegaConf.to_container(value)
        if not rule.check(value):
            raise ConfigError(f"{rule.key}={value!r} is invalid: use {rule.valid}")
    if cfg.get("trainer") is not None:
        check_trainer_keys(cfg.trainer)
    model = cfg.get("model") or {}
    if str(model.get("_target_", "")).endswith("AgentMLP"):
        from agent_lightning.model import ACTIVATIONS, NORMS

        for key, choices in (("activation", ACTIVATIONS), ("norm", NORMS)):
            if key in model and model[key] not in choices:
                raise ConfigError(f"model.{key}={model[key]!r} is invalid: use one of {', '.join(choices)}")
    optimizer = cfg.get("optimizer") or {}
    if optimizer.get("nesterov") and not optimizer.get("momentum"):
        raise ConfigError("optimizer.nesterov=true needs optimizer.momentum > 0")
    for group, built_with in (("optimizer", {"params"}), ("scheduler", {"optimizer", "interval"})):
        _check_arguments(group, cfg.get(group) or {}, built_with)
    _check_metric_names(cfg)


def _check_arguments(group: str, node: Any, built_with: set[str]) -> None:
    """Every key of an optimizer or scheduler config is an argument of its `_target_` (checked before a rank starts)."""
    target = node.get("_target_")
    if not target:
        return
    try:
        parameters = inspect.signature(hydra.utils.get_object(str(target))).parameters
    except Exception:  # a target that cannot be looked at here: Hydra names it when it is built
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(str(k) for k in node if not str(k).startswith("_") and k not in parameters and k not in built_with)
    if unknown:
        valid = ", ".join(n for n in parameters if n not in built_with and n != "self")
        raise ConfigError(f"{group}.{unknown[0]} is not an argument of {target}: use one of {valid}")


def check_output_dir(cfg: DictConfig) -> None:
    """Refuse an output directory that cannot be created or written, before anything trains."""
    output = Path(str(cfg.paths.output_dir))
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output, prefix=".write-check-"):
            pass
    except OSError as err:
        raise ConfigError(
            f"paths.output_dir={output} cannot be written ({err.strerror or err}): choose another hydra.run.dir"
        ) from None


def parameter_count(cfg: DictConfig) -> int:
    """The configured model's number of parameters (built on the meta device: no memory)."""
    with torch.device("meta"):
        return sum(p.numel() for p in hydra.utils.instantiate(cfg.model).parameters())


def model_shapes(cfg: DictConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in the configured model (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = hydra.utils.instantiate(cfg.model)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def compare_layers(where: str, stored: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> None:
    """Raise ConfigError naming the first layer whose stored shape (at `where`, e.g. 'ckpt_path=...') differs."""
    for name, shape in expected.items():
        if name in stored and stored[name] != shape and name.startswith("normalizer."):
            raise ConfigError(  # the observation width: set by the data (model.input_dim follows it)
                f"{where}: its model reads {stored[name][0]} features per observation but this run's has "
                f"{shape[0]} (model.input_dim, from the data): train on data with the checkpoint's features"
            )
        if name in stored and stored[name] != shape and name.startswith("head.") and stored[name][0] != shape[0]:
            raise ConfigError(  # the class count: set by the data (model.output_dim follows it)
                f"{where}: its model has {stored[name][0]} outputs (classes) but this run's has {shape[0]} "
                "(model.output_dim, from the data's classes): use data with the checkpoint's classes (prepare "
                "with num_classes= or class_names=)"
            )
        if name in stored and stored[name] != shape:
            raise ConfigError(
                f"{where}: layer {name} is {list(stored[name])} in the checkpoint but {list(shape)} with "
                "this config: use the model.* values of the run that wrote it (e.g. model.hidden_dim)"
            )
    missing, extra = sorted(expected.keys() - stored.keys()), sorted(stored.keys() - expected.keys())
    if missing or extra:
        detail = f"missing {', '.join(missing[:3])}" if missing else f"has extra {', '.join(extra[:3])}"
        raise ConfigError(
            f"{where}: the checkpoint's model {detail}: use the model.* values of the run that wrote it "
            "(e.g. model.num_layers, model.norm)"
        )


def check_resume_checkpoint(cfg: DictConfig) -> None:
    """`ckpt_path` exists, is safe to read, suits the strategy, and its layers fit this config's model."""
    path = Path(str(cfg.ckpt_path))
    if not path.exists():
        hint = " (ckpt_path=latest resumes the newest run's last.ckpt)" if str(path) in ("last", "best") else ""
        raise ConfigError(f"ckpt_path={path} does not exist{hint}")
    sharded = cfg.strategy.get("name") in SHARDED
    if path.is_dir():
        if not (path / safe_load.DCP_METADATA).is_file():
            raise ConfigError(
                f"ckpt_path={path} is a directory without a checkpoint (no {safe_load.DCP_METADATA}): give a "
                "checkpoint file (e.g. <run>/checkpoints/last.ckpt) or a sharded checkpoint directory"
            )
        if not sharded:
            raise ConfigError(
                f"ckpt_path={path} is a sharded checkpoint directory (written by strategy=fsdp/model_parallel): "
                "resume it with that strategy, or convert it with `python -m agent_lightning.export`"
            )
        try:
            shapes = safe_load.distributed_tensor_shapes(path)
        except ConfigError as err:
            raise ConfigError(f"ckpt_path={path}: {err}") from None
        stored = {
            safe_load.plain_name(k.removeprefix("state_dict.model.")): v
            for k, v in shapes.items()
            if k.startswith("state_dict.model.")
        }
        meta = path / safe_load.LIGHTNING_META
        if not meta.is_file():  # Lightning keeps the loops' state and hyperparameters there: no resume without it
            raise ConfigError(
                f"ckpt_path={path} has no {safe_load.LIGHTNING_META} (the training state beside the shards): it is "
                "not a whole checkpoint; resume from another one, or take its weights with init_from="
            )
        training_state = safe_load.load_file(meta, mmap=True)
        _check_same_training_setup(cfg, path, training_state)
        check_same_schema(f"ckpt_path={path}", saved_schema(training_state), cfg.data)
    else:
        if sharded:
            raise ConfigError(
                f"ckpt_path={path} is a single-file checkpoint (written by strategy=single/ddp) but strategy="
                f"{cfg.strategy.name} resumes from a sharded checkpoint directory: use the strategy that wrote it"
            )
        if global_rank() != 0:
            return  # global rank 0 (or the launcher before it) reads the file; one read is enough
        try:
            checkpoint = safe_load.load_file(path, mmap=True)
        except ConfigError as err:
            raise ConfigError(f"ckpt_path={err}") from None
        state = checkpoint.get("state_dict")
        if not isinstance(state, dict) or "loops" not in checkpoint:
            raise ConfigError(
                f"ckpt_path={path} is not a training checkpoint written by agent_lightning (no state_dict/loops)"
            )
        stored = {
            safe_load.plain_name(k.removeprefix("model.")): tuple(v.shape)
            for k, v in state.items()
            if k.startswith("model.") and isinstance(v, torch.Tensor)
        }
        _check_same_training_setup(cfg, path, checkpoint)
        check_same_schema(f"ckpt_path={path}", saved_schema(checkpoint), cfg.data)
    compare_layers(f"ckpt_path={path}", stored, model_shapes(cfg))


def _check_same_training_setup(cfg: DictConfig, path: Path, checkpoint: dict[str, Any]) -> None:
    """An exact resume restores the optimizer's and the LR schedule's state: they must be of the same kind.

    Its `trainer.max_epochs` counts the run's epochs in all, so it cannot be below those already done.
    """
    done = epochs_done(fit_loop_state(checkpoint))
    max_epochs = cfg.trainer.get("max_epochs")
    if done is not None and isinstance(max_epochs, int) and max_epochs != -1 and done > max_epochs:
        raise ConfigError(
            f"ckpt_path={path} has run {done} epochs but trainer.max_epochs={max_epochs}: on resume it counts the "
            f"run's epochs in all, so give more than {done} to train on"
        )
    saved = (checkpoint.get("hyper_parameters") or {}).get("config")
    if not isinstance(saved, dict):
        return  # a checkpoint without its run config: Lightning's own checks remain
    for group in ("optimizer", "scheduler"):
        before = str((saved.get(group) or {}).get("_target_") or "none")
        now = str((cfg.get(group) or {}).get("_target_") or "none")
        if before != now:
            raise ConfigError(
                f"ckpt_path={path} holds the state of {group} {before.rsplit('.', 1)[-1]} but this run's {group} is "
                f"{now.rsplit('.', 1)[-1]}: resume with the {group} that wrote it, or start a new run from its "
                f"weights with init_from={path}"
            )
    _check_same_optimizer_values(cfg, path, saved.get("optimizer") or {})
    for key in ("activation", "norm"):  # the same weights computing another function: shapes cannot tell
        before, now = (saved.get("model") or {}).get(key), (cfg.get("model") or {}).get(key)
        if before is not None and now is not None and before != now:
            raise ConfigError(
                f"ckpt_path={path} was trained with model.{key}={before} but this run has model.{key}={now}: "
                f"resume with model.{key}={before}"
            )
    _check_same_planned_length(cfg, path, checkpoint, saved)  # once the schedule is known to be the same kind


def _check_same_optimizer_values(cfg: DictConfig, path: Path, saved: dict[str, Any]) -> None:
    # The optimizer's state restores its hyperparameters (lr, weight_decay, betas, ...) with the moments:
    # a changed value would be recorded in the run's config and never used.
    node = cfg.get("optimizer")
    now = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else {}
    assert isinstance(now, dict)
    for key, value in now.items():
        before = saved.get(key)
        if str(key).startswith("_") or before is None or value is None or before == value:
            continue
        raise ConfigError(
            f"ckpt_path={path} restores optimizer.{key}={before} with the optimizer's state, so optimizer.{key}="
            f"{value} would not be used: resume with optimizer.{key}={before}, or start a new run from its "
            f"weights with init_from={path} (a fresh optimizer)"
        )


def _check_same_planned_length(cfg: DictConfig, path: Path, checkpoint: dict[str, Any], saved: dict[str, Any]) -> None:
    # A schedule planned over the run's steps (onecycle) restores its plan: another run length would step past it.
    planned = [
        state["total_steps"]
        for state in checkpoint.get("lr_schedulers") or []
        if isinstance(state, dict) and isinstance(state.get("total_steps"), int)
    ]
    if not planned:
        return
    keys = ("max_epochs", "max_steps")
    before = {key: (saved.get("trainer") or {}).get(key) for key in keys}
    changed = [key for key in keys if before[key] != cfg.trainer.get(key)]
    if changed:
        was = " ".join(f"trainer.{key}={before[key]}" for key in changed)
        raise ConfigError(
            f"ckpt_path={path} holds an LR schedule planned over {planned[0]} optimizer steps ({was}), which "
            f"cannot be stretched: resume with {was}, or start a new run from its weights with init_from={path}"
        )

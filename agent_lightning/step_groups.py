"""`trainer.steps_per_execution=auto`: several optimizer steps per Lightning step, when nothing can tell.

Lightning's loop costs a fixed slice of every step it drives (hooks, progress, logging). Grouping
K batches per Lightning step pays it once per K optimizer steps (`data/executions.py`). The module
keeps what counts batches exact inside a group (step counts, the logged step loss and its step, the
loggers' step axis); what Lightning counts in its own steps would change, so `auto` groups only when
none of those is in use, and no more batches than the shortest interval anything in the run acts on
(a log, a check, a checkpoint every N steps) or than take about GROUP_SECONDS; otherwise it takes one
batch per Lightning step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, open_dict

from agent_lightning import safe_load
from agent_lightning.data.fitting import is_stream_config
from agent_lightning.errors import ConfigError
from agent_lightning.step import AUTO, check_batch_counts, step_options
from agent_lightning.validation import available_devices, parameter_count

if TYPE_CHECKING:
    from lightning.pytorch import Callback

# The most batches per Lightning step that `auto` picks: the loop's cost per optimizer step falls to a
# thirty-second (on 2 CPU cores: ~0.5 ms a Lightning step against a ~2.7 ms optimizer step), while a group,
# whose batches are held at once, stays small (32 batches of 512 observations of 128 floats: 8 MiB).
AUTO_STEPS = 32
# A group is acted on as a whole: a signal's stop, `max_time` and the progress bar wait for its end. `auto`
# keeps a group to about GROUP_SECONDS of compute, so a slow model's step is not grouped (a scheduler's grace
# period before SIGKILL is often 30 s), while Lightning's ~0.5 ms per group stays a small share of it. The compute
# is estimated from the model's size (6 x parameters x batch FLOPs per step, a dense network's training step)
# at a rate measured here: this package's MLPs train at 60-75 GFLOP/s per CPU thread (2 threads, MKL, fp32).
# A GPU's rate is that of a recent data-centre GPU's fp32 GEMMs: there, only very large steps are split.
GROUP_SECONDS = 0.25
CPU_FLOPS_PER_THREAD = 6e10
CUDA_FLOPS = 5e13
log = logging.getLogger("agent_lightning")
_BATCH_HOOKS = ("on_train_batch_start", "on_train_batch_end")


def handles_grouped_steps(callback: Callback) -> bool:
    """Whether `callback` is right when one Lightning step runs several optimizer steps.

    True when it has no per-batch hook, declares `handles_grouped_steps = True` (this package's own
    callbacks and progress bars count optimizer steps or batches, not Lightning steps), or is a
    ModelCheckpoint without a per-step interval.
    """
    from lightning.pytorch import Callback  # loaded by the time there are callbacks; the resume check needs none
    from lightning.pytorch.callbacks import ModelCheckpoint

    if getattr(callback, "handles_grouped_steps", False):
        return True
    if isinstance(callback, ModelCheckpoint):
        return not callback._every_n_train_steps
    return all(getattr(type(callback), hook) is getattr(Callback, hook) for hook in _BATCH_HOOKS)


def _step_interval(callback: Callback) -> int:
    # How often a group-aware callback acts, in steps (0: not per step).
    from lightning.pytorch.callbacks import ModelCheckpoint

    if isinstance(callback, ModelCheckpoint):
        return callback._every_n_train_steps or 0
    return getattr(callback, "check_every_n_steps", None) or 0


def _why_one_batch(cfg: DictConfig, callbacks: Sequence[Callback]) -> str:
    trainer = cfg.trainer
    if is_stream_config(cfg.data):
        return "data=stream decides between steps which parts are visible"
    for key in ("fast_dev_run", "overfit_batches", "profiler"):
        if trainer.get(key):
            return f"trainer.{key} is set"
    for key in ("limit_train_batches", "val_check_interval"):  # Lightning counts these in its own steps
        value = trainer.get(key)
        if value is not None and not (isinstance(value, float) and value == 1.0):
            return f"trainer.{key}={value} is set"
    if (trainer.get("max_steps") or -1) >= 0:  # a Lightning step cut short would end its epoch for Lightning
        return f"trainer.max_steps={trainer.max_steps} can stop the run inside a group"
    for callback in callbacks:
        if not handles_grouped_steps(callback):
            return f"callback {type(callback).__name__} has per-batch hooks"
    return ""


def _shortest_interval(cfg: DictConfig, callbacks: Sequence[Callback]) -> tuple[int, str]:
    # The fewest steps between two things the run does (a logged loss, a check, a checkpoint), and what it is.
    log_every = cfg.trainer.get("log_every_n_steps") or 0
    intervals = [(log_every, f"trainer.log_every_n_steps={log_every}")]
    for callback in callbacks:
        every = _step_interval(callback)
        often = "every step" if every == 1 else f"every {every} steps"
        intervals.append((every, f"callback {type(callback).__name__} acts {often}"))
    return min(((steps, what) for steps, what in intervals if steps > 0), default=(0, ""))


def _auto_steps(cfg: DictConfig, callbacks: Sequence[Callback], world: int) -> tuple[int, str]:
    # `auto`'s number of batches per Lightning step, and why when it is not AUTO_STEPS.
    why_one = _why_one_batch(cfg, callbacks)
    if why_one:
        return 1, why_one
    interval, what = _shortest_interval(cfg, callbacks)
    by_time, took = _steps_in_group_seconds(cfg, world)
    if by_time < min(interval or AUTO_STEPS, AUTO_STEPS):
        return by_time, took
    if 0 < interval < AUTO_STEPS:  # a group never spans two of its points: whoever asks every N steps gets that
        return interval, what
    return AUTO_STEPS, ""


def _steps_in_group_seconds(cfg: DictConfig, world: int) -> tuple[int, str]:
    # How many of this model's steps take about GROUP_SECONDS on one rank, and the estimate in words. The ranks
    # share the work of a step: data-parallel ranks split the (global) batch, tensor-parallel ones the layers.
    flops = 6 * parameter_count(cfg) * int(cfg.data.batch_size) / world
    kind, _ = available_devices(str(cfg.trainer.accelerator))
    if kind == "cuda":
        seconds, where = flops / CUDA_FLOPS, "a GPU"
    else:  # the rank's threads are set by now (`runs/threads.py`)
        threads = torch.get_num_threads()
        seconds, where = flops / (CPU_FLOPS_PER_THREAD * threads), f"{threads} CPU thread{'s' * (threads > 1)}"
    steps = max(1, int(GROUP_SECONDS / seconds))
    batch = f"batch {cfg.data.batch_size}" + (f" over {world} ranks" if world > 1 else "")
    took = f"a step of this model at {batch} takes ~{seconds * 1e3:.0f} ms on {where} by its size"
    return steps, f"{took}; groups are kept to ~{GROUP_SECONDS:g} s"


def checkpoint_steps_per_execution(path: str | Path) -> int:
    """The batches per Lightning step a training checkpoint file (or sharded directory) was written with."""
    path = Path(path)
    return written_steps_per_execution(
        safe_load.load_file(path / safe_load.LIGHTNING_META if path.is_dir() else path, mmap=True)
    )


def written_steps_per_execution(checkpoint: dict[str, Any]) -> int:
    """The batches per Lightning step a loaded checkpoint was written with (1 for one from before groups)."""
    step = (checkpoint.get("hyper_parameters") or {}).get("step") or {}
    return int(step.get("steps_per_execution", 1))


def check_resume_grouping(cfg: DictConfig) -> None:
    """A run resumes with the grouping its checkpoint was written with: Lightning counts its position in groups."""
    requested: Any = step_options(cfg.trainer).steps_per_execution
    if not cfg.get("ckpt_path"):
        return
    written = checkpoint_steps_per_execution(cfg.ckpt_path)
    if requested == AUTO:  # auto resumes with the checkpoint's groups, in which Lightning counts batches too
        if written > 1:
            check_batch_counts(cfg.trainer, written, str(cfg.ckpt_path))
        return
    if written != requested:
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path} was written with trainer.steps_per_execution={written} (its position in "
            f"the epoch counts groups of that many batches): resume with trainer.steps_per_execution={written} or auto"
        )


def _resumed_grouping(cfg: DictConfig, chosen: int, why: str) -> tuple[int, str]:
    # A resumed run keeps its checkpoint's groups: Lightning counted its position in the epoch in them.
    written = checkpoint_steps_per_execution(cfg.ckpt_path)
    if written == chosen:
        return written, why
    if written > chosen and why:  # something in this run would have asked for shorter groups
        if is_stream_config(cfg.data):
            raise ConfigError(
                f"ckpt_path={cfg.ckpt_path} was written with trainer.steps_per_execution={written}, which "
                "data=stream refuses (it decides between steps which parts are visible)"
            )
        log.warning(
            "resuming with %d batches per Lightning step as ckpt_path was written (auto would take %d: %s)",
            written,
            chosen,
            why,
        )
    return written, "as ckpt_path was written"


def resolve_steps_per_execution(cfg: DictConfig, callbacks: Sequence[Callback], world: int = 1) -> int:
    """Replace `trainer.steps_per_execution=auto` in `cfg` by the batches per Lightning step of `world` ranks."""
    requested: Any = step_options(cfg.trainer).steps_per_execution
    if requested != AUTO:
        return int(requested)
    steps, why = _auto_steps(cfg, callbacks, world)
    if cfg.get("ckpt_path"):
        steps, why = _resumed_grouping(cfg, steps, why)
    batches = "1 batch" if steps == 1 else f"{steps} batches"
    log.info("trainer.steps_per_execution=auto: %s per Lightning step%s", batches, f" ({why})" if why else "")
    with open_dict(cfg):
        cfg.trainer.steps_per_execution = steps
    return steps

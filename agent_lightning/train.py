"""Entry point: `python -m agent_lightning.train [overrides]`, and `train(cfg)` for code and tests.

The config is resolved and checked here before Lightning is imported: a bad value is one line after
about 3 s on a 2-core CPU host (6 s when Lightning loaded first), and no rank starts. Training itself
is `agent_lightning.fit`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from agent_lightning.agents.environments import check_env_eval
from agent_lightning.config import check_required_groups, config_dir, hydra_command
from agent_lightning.data.fitting import resolve_data_dims
from agent_lightning.errors import ConfigError, exit_if_reported, signal_exit_code
from agent_lightning.launch import launch_ranks, setup_rank_logging
from agent_lightning.parallel.degrees import choose_strategy, cpu_processes_per_node
from agent_lightning.runs.environment import environment_restored
from agent_lightning.runs.identity import check_name_override, check_trackers_installed
from agent_lightning.runs.in_place import discard_resume_record, in_place_arguments, resolve_latest
from agent_lightning.runs.lock import global_rank, refuse_new_run_over, refuse_taken_run_dir, run_directory_lock
from agent_lightning.runs.matmul import float32_matmul_precision, log_matmul_hint
from agent_lightning.runs.report import config_tree, hydra_choices, run_contents, saved_config_dir
from agent_lightning.runs.threads import cpu_threads
from agent_lightning.step import check_step_options
from agent_lightning.step_groups import check_resume_grouping
from agent_lightning.validation import (
    available_devices,
    launched_externally,
    parameter_count,
    resolve_devices,
    validate,
)

if TYPE_CHECKING:
    from lightning.pytorch.callbacks import Callback

    from agent_lightning.search import Pruned

log = logging.getLogger("agent_lightning")


def resolve_auto_strategy(cfg: DictConfig) -> None:
    """Replace `strategy=auto` in `cfg` by the strategy chosen for this model and these devices."""
    if cfg.strategy.get("name") != "auto":
        return
    kind, _ = available_devices(str(cfg.trainer.accelerator))
    devices = resolve_devices(cfg)
    if kind == "cpu":
        devices, why = cpu_processes_per_node(devices)
        if why:
            log.info("strategy=auto: %s", why)
            with open_dict(cfg):
                cfg.devices = devices
    if kind == "cuda":
        device_bytes = torch.cuda.get_device_properties(0).total_memory
    else:  # CPU ranks share the host's memory
        device_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // devices
    name, reason = choose_strategy(
        parameter_count(cfg), devices, cfg.num_nodes, device_bytes, cfg.strategy.memory_fraction
    )
    chosen = OmegaConf.load(config_dir() / "strategy" / f"{name}.yaml")
    if name == "model_parallel":
        chosen.tensor_parallel = devices
    with open_dict(cfg):
        cfg.strategy = chosen
    log.info("strategy=auto chose %s: %s", name, reason)


def train(cfg: DictConfig, extra_callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Fit, then test; return the final metrics (floats) and where the run's files are.

    The run directory is locked for the run; the caller's CPU threads, float32 matmul precision and environment are
    restored after.
    """
    return train_checked(cfg, *_resolve_and_check(cfg), extra_callbacks)


def _resolve_and_check(cfg: DictConfig) -> tuple[int, int]:
    # Once per job (a launcher's ranks get the checked config): the checks read manifests and checkpoints.
    check_required_groups(cfg)
    resolve_latest(cfg)
    _refuse_new_run_over_another(cfg)
    resolve_data_dims(cfg)
    resolve_auto_strategy(cfg)
    devices, world = validate(cfg)
    check_step_options(cfg)
    check_resume_grouping(cfg)
    check_env_eval(cfg)
    check_trackers_installed(cfg)  # last: a user's own tracker class is imported, and Lightning with it
    return devices, world


def train_checked(
    cfg: DictConfig, devices: int, world: int, extra_callbacks: Sequence[Callback] = ()
) -> dict[str, Any]:
    """`train` of a config already resolved and checked for `devices` per node and `world` ranks (a launched rank)."""
    kind, cores = available_devices(str(cfg.trainer.accelerator))
    threads, matmul = cfg.trainer.get("threads"), cfg.trainer.get("float32_matmul_precision")
    with (
        environment_restored(),
        run_directory_lock(cfg.paths.output_dir),
        cpu_threads(threads, cores, min(devices, world), kind == "cpu"),
        float32_matmul_precision(matmul),
    ):
        log_matmul_hint(matmul, cfg.trainer.precision, kind == "cpu")
        from agent_lightning.fit import fit_and_test  # Lightning loads once the config is known to be good

        return fit_and_test(cfg, devices, world, extra_callbacks)


def optimized_value(cfg: DictConfig, metrics: dict[str, Any]) -> float | Pruned | None:
    """The value a sweeper optimises: `metrics[cfg.optimized_metric]` (or `Pruned`); raises if never logged."""
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if "pruned_at_epoch" in metrics:
        from agent_lightning.search import Pruned  # Optuna is only imported for searches

        return Pruned(metrics["pruned_at_epoch"])
    if name not in metrics:
        logged = ", ".join(sorted(k for k, v in metrics.items() if isinstance(v, float)))
        raise ConfigError(f"optimized_metric={name!r} was never logged; logged metrics: {logged}")
    return float(metrics[name])


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train in this process, or start one process per rank when the job needs several."""
    return _run_checked(cfg, *_resolve_and_check(cfg))


def _run_checked(cfg: DictConfig, devices: int, world: int) -> dict[str, Any]:
    if world > 1 and not launched_externally():
        # One node: its ranks run under this process's lock. Several: every node's launcher shares the
        # run directory, so global rank 0 takes the lock, wherever it runs.
        with run_directory_lock(cfg.paths.output_dir) if cfg.num_nodes == 1 else contextlib.nullcontext():
            return launch_ranks(cfg, devices, world)
    return train_checked(cfg, devices, world)


def _refuse_new_run_over_another(cfg: DictConfig) -> None:
    # From Python or `paths.output_dir=` (the command line's `hydra.run.dir=` is refused before Hydra writes there).
    if global_rank() == 0:
        refuse_new_run_over(Path(str(cfg.paths.output_dir)), "paths.output_dir", cfg.get("ckpt_path"))


def _summary(metrics: dict[str, Any]) -> str:
    keys = ("train/loss_epoch", "val/acc", "val/acc_best", "test/acc", "data/reachable_acc", "perf/samples_per_s")
    return "  ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics)


@hydra_command("config", check_job=_resolve_and_check)
def hydra_main(cfg: DictConfig) -> float | Pruned | None:
    """Hydra entry: one job (or one job of a sweep); returns `cfg.optimized_metric` for sweepers."""
    rank = global_rank()
    if launched_externally() and rank != 0:
        setup_rank_logging(rank, log_file=None)  # torchrun/SLURM ran Hydra on every rank: keep rank 0's log
    log.info("Run directory: %s", cfg.paths.output_dir)
    try:
        _check_working_directory_kept(cfg)
        devices, world = _resolve_and_check(cfg)  # a bad value is one line, not a config tree and then the line
    except Exception as err:
        discard_resume_record()  # a refused resume leaves no `.hydra/resume-<n>/` of a run that never ran
        exit_if_reported(err)
        raise  # a bug: keep its traceback
    if cfg.get("print_config", True):
        log.info(
            "Composed config (saved in %s/config.yaml):\n%s", saved_config_dir(), config_tree(cfg, hydra_choices())
        )
    metrics = _run_checked(cfg, devices, world)  # a bad value, a diverged run, a stop: reported by hydra_command
    if metrics:
        log.info("Final: %s", _summary(metrics))
        log.info("Run directory: %s (%s)", cfg.paths.output_dir, run_contents(Path(str(cfg.paths.output_dir))))
    try:
        return optimized_value(cfg, metrics)
    except ConfigError as err:
        if not _in_search():  # nothing reads the value of a single run or a grid's job: not logging it is fine
            log.debug("%s", err)
            return None
        log.error("%s", err)
        sys.exit(2)


def _check_working_directory_kept(cfg: DictConfig) -> None:
    """ConfigError for a relative path under `hydra.job.chdir=true`; a warning when `paths.output_dir` splits a run.

    Hydra keeps its config and log in its own run directory, which `paths.output_dir` moves the run's other
    files away from.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    if HydraConfig.get().job.chdir:  # the job now runs in its run directory: a relative path would be read there
        for key in ("data.path", "data.replay.path", "ckpt_path", "init_from"):
            value = OmegaConf.select(cfg, key, default=None)
            if value and str(value) != "latest" and not Path(str(value)).is_absolute():
                raise ConfigError(
                    f"{key}={value} is relative, and hydra.job.chdir=true reads it from the run directory: give an "
                    f"absolute path (e.g. {key}=${{hydra:runtime.cwd}}/{value}), or leave hydra.job.chdir=false"
                )
    hydra_dir = Path(HydraConfig.get().runtime.output_dir).resolve()
    if Path(str(cfg.paths.output_dir)).resolve() != hydra_dir:
        log.warning(
            "paths.output_dir=%s: Hydra keeps this run's config and log in %s; hydra.run.dir=%s keeps them together",
            cfg.paths.output_dir,
            hydra_dir,
            cfg.paths.output_dir,
        )


# Sweepers that only run their jobs: they never read a job's returned value.
_GRID_SWEEPERS = ("GridSweeper", "BasicSweeper")


def _in_search() -> bool:
    """Whether this job belongs to a search (Optuna, Ray Tune, ...) that optimises the value it returns."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return False
    sweeper = str(HydraConfig.get().sweeper.get("_target_", ""))
    return sweeper.rsplit(".", 1)[-1] not in _GRID_SWEEPERS


def main() -> None:
    """Command line: a checkpoint of a run directory resumes in it (`ckpt_path=latest`: the newest run's)."""
    try:
        check_name_override(sys.argv)  # before Hydra makes outputs/<name>/ of a name the run refuses
        sys.argv = in_place_arguments(sys.argv)
        refuse_taken_run_dir(sys.argv)  # before Hydra writes .hydra/ and train.log into another run's directory
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    try:
        hydra_main()
    except KeyboardInterrupt:  # outside training (where `runs/stops.py` handles it)
        print("interrupted (SIGINT): stopped without saving", file=sys.stderr)
        sys.exit(signal_exit_code(signal.SIGINT))


if __name__ == "__main__":
    main()

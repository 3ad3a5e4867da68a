"""One rank's training: the LightningModule, data, callbacks and Trainer a checked config asks for; fit, then test.

`agent_lightning.train` resolves and checks the config first (without Lightning, so a bad value is
reported before the training libraries load), then calls `fit_and_test` here, in this process or on
every rank it starts.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import hydra
import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from agent_lightning.agents.env_eval import EnvEvaluation, env_eval_callbacks
from agent_lightning.callbacks import FiniteLossGuard
from agent_lightning.checkpoint_io import AtomicCheckpointIO
from agent_lightning.console import build_progress_bar, print_lightning_lines_once
from agent_lightning.data.adapting import adapt_to_splits, apply_data_statistics
from agent_lightning.errors import ConfigError
from agent_lightning.module import AgentModule, built_parts
from agent_lightning.parallel.strategies import build_strategy
from agent_lightning.runs.data_resume import DataAwareResume
from agent_lightning.runs.init_from import load_initial_weights
from agent_lightning.runs.nothing_left import NothingLeftCheck, keep_metrics_if_untrained
from agent_lightning.runs.stops import StopOnSignal, stopped_by_signal
from agent_lightning.step import lightning_trainer_config, step_options
from agent_lightning.step_groups import resolve_steps_per_execution
from agent_lightning.tracking import LogConfigToTrackers, build_loggers, finish_run
from agent_lightning.validation import pruning_monitor

log = logging.getLogger("agent_lightning")
# Quiet two messages Lightning prints on every run that say nothing about this run.
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: "litlogger" not in record.getMessage()
)
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
# last.ckpt is rewritten on purpose; for a sharded (directory) checkpoint torch warns every time.
warnings.filterwarnings("ignore", message=r"Detected an existing checkpoint in .*overwriting")


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    if not group:
        return []
    return [hydra.utils.instantiate(item) for item in group.values() if item and "_target_" in item]


def build_module(cfg: DictConfig) -> AgentModule:
    """The LightningModule with its model, optimizer factory and LR scheduler factory."""
    return AgentModule(
        **built_parts(cfg),
        num_classes=cfg.model.output_dim,
        label_smoothing=cfg.loss.label_smoothing,
        parallel=OmegaConf.to_container(cfg.strategy, resolve=True),
        config=OmegaConf.to_container(cfg, resolve=True),
        step=step_options(cfg.trainer).as_dict(),
    )


def build_callbacks(cfg: DictConfig, extra_callbacks: Sequence[Callback] = ()) -> list[Callback]:
    """The run's callbacks: the `callbacks` group, the guards every run has, `extra_callbacks`, the progress bar."""
    callbacks: list[Callback] = [
        *_instantiate_all(cfg.get("callbacks")),
        FiniteLossGuard(),
        StopOnSignal(),
        DataAwareResume(),
        NothingLeftCheck(),
        *env_eval_callbacks(cfg),
        *extra_callbacks,
    ]
    return [*callbacks, LogConfigToTrackers(cfg), *filter(None, [build_progress_bar(cfg)])]


def build_trainer(cfg: DictConfig, devices: int, world: int, callbacks: Sequence[Callback]) -> pl.Trainer:
    """The Lightning Trainer with strategy, `callbacks`, loggers and atomic checkpoint writes."""
    loggers = build_loggers(cfg)
    if not loggers:  # LearningRateMonitor refuses to run without a logger to write to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return hydra.utils.instantiate(
        lightning_trainer_config(cfg.trainer),  # the module applies clipping, accumulation and compile itself
        devices=devices,
        num_nodes=cfg.num_nodes,
        strategy=build_strategy(cfg.strategy, world),
        callbacks=list(callbacks),
        # Lightning would add a checkpoint callback of its own; `callbacks=none` means none.
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        _convert_="object",
    )


def fit_and_test(cfg: DictConfig, devices: int, world: int, extra_callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Fit on this process's rank of a checked config, then test; the final metrics and where the run's files are."""
    print_lightning_lines_once()  # Lightning was imported after logging was set up: its own handler would repeat lines
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = hydra.utils.instantiate(cfg.data, augmentations=_instantiate_all(cfg.get("augment")))
    pruning = _pruning_callback(cfg)
    callbacks = build_callbacks(cfg, [*extra_callbacks, *([pruning] if pruning else [])])
    steps = resolve_steps_per_execution(cfg, callbacks, world)  # before the module and the loaders see it
    module = build_module(cfg)
    datamodule.group_batches(steps)
    from_saved_weights = load_initial_weights(module.model, cfg)  # `init_from`: weights and their statistics
    apply_data_statistics(module.model, datamodule, from_saved_weights)  # before any strategy wraps or shards it
    trainer = build_trainer(cfg, devices, world, callbacks)
    has_test_split = adapt_to_splits(trainer, datamodule)
    try:  # a checkpoint is read without running code from it (its contents were checked by `validate`)
        with warnings.catch_warnings():
            if steps > 1:  # Lightning would compare its count of groups with log_every_n_steps (in batches)
                warnings.filterwarnings("ignore", message=r"The number of training batches .* logging interval")
            if cfg.get("ckpt_path"):  # a resume in place continues its own checkpoints/ on purpose
                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    except SIGTERMException:
        raise stopped_by_signal(trainer) from None
    except ValueError as err:
        if "`val_check_interval`" not in str(err):
            raise
        # Lightning's check, once it knows the epoch's length (in its steps): said in the user's batches.
        raise ConfigError(
            f"trainer.val_check_interval={cfg.trainer.val_check_interval} is more batches than an epoch has: use "
            "at most the epoch's batches, a fraction of the epoch (e.g. 0.5), or trainer.check_val_every_n_epoch=null "
            "to count batches across epochs"
        ) from None
    metrics: dict[str, Any] = {key: float(value) for key, value in trainer.callback_metrics.items()}
    metrics = keep_metrics_if_untrained(trainer, cfg, metrics)  # a resume with nothing left to train
    if pruning is not None and pruning.pruned_at_epoch is not None:
        pruned = {**metrics, "pruned_at_epoch": pruning.pruned_at_epoch, "run_dir": str(cfg.paths.output_dir)}
        finish_run(trainer, cfg, pruned, status="pruned")
        return pruned

    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
    # A resume that trained nothing holds the summary's test metrics for these same weights: no test again.
    tested = any(key.startswith("test/") for key in metrics)
    if cfg.get("test", True) and has_test_split and not tested:
        try:
            trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True)
        except SIGTERMException:  # Lightning's own SIGTERM handling, while testing
            raise stopped_by_signal(trainer) from None
        metrics.update({key: float(value) for key, value in trainer.callback_metrics.items()})
    reachable = datamodule.reachable_accuracy("val")
    if reachable is not None:
        metrics["data/reachable_acc"] = reachable
    result = {**metrics, "run_dir": str(cfg.paths.output_dir), "best_model_path": best}
    failed = [c.failure for c in callbacks if isinstance(c, EnvEvaluation) and c.failure]
    # Final metrics to every tracker, summary.json in the run directory: written whether or not env_eval failed.
    finish_run(trainer, cfg, result, status="env_eval failed" if failed else "finished")
    if failed:  # after the test and the summary: only the env's part of the run is missing
        kept = cfg.paths.output_dir
        raise ConfigError(f"env_eval: {failed[0]}; the run's checkpoints and summary.json are kept in {kept}")
    return result


def _pruning_callback(cfg: DictConfig) -> Callback | None:
    trial = cfg.get("optuna_trial")
    if not trial or trial.get("trial_id") is None:
        return None
    from agent_lightning.search import OptunaPruning  # Optuna is only imported for searches

    return OptunaPruning(trial.storage, trial.study_name, int(trial.trial_id), monitor=pruning_monitor(cfg))

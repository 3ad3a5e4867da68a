"""Hyperparameter search on Ray Tune: Optuna's sampler proposes, ASHA stops hopeless trials early.

`-m hparams_search=ray` selects this sweeper. The search space uses the same syntax as the Optuna
sweeper; each trial is an ordinary `train(cfg)` run composed from the command line's overrides
plus the trial's values, reporting every validation metric to Tune after each epoch with a
checkpoint, so Tune can stop it (ASHA), and a stopped search resumes from the trials' checkpoints
when it is rerun with the same `hydra.sweep.dir`. Locally Ray starts on this machine; with
`hydra.sweeper.address` it joins an existing Ray cluster, which spreads the trials over its nodes.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

import agent_lightning
from agent_lightning.errors import ConfigError
from agent_lightning.search.space import as_override, flatten, parse_space
from agent_lightning.search.space_check import check_space
from agent_lightning.sweep_jobs import JobChecker
from agent_lightning.validation import FIT_METRICS, OWNED_NAMESPACES, check_direction

log = logging.getLogger(__name__)
CHECKPOINT = "tune.ckpt"


class TuneReport(pl.Callback):
    """Reports the epoch's metrics and a checkpoint to Ray Tune after every training epoch (validation included).

    Lightning calls a callback's `on_train_epoch_end` before the module's, where the module logs the
    epoch's `train/acc` and `train/loss_epoch`: reported from there, they would be the previous epoch's.
    So the report follows the module's own hook, for the duration of the fit.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Report right after the module's `on_train_epoch_end` has logged the epoch's metrics."""
        module_hook = pl_module.on_train_epoch_end

        def then_report() -> None:
            module_hook()
            self.report(trainer)

        pl_module.on_train_epoch_end = then_report  # type: ignore[method-assign]

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Give the module its own hook back."""
        pl_module.__dict__.pop("on_train_epoch_end", None)

    def report(self, trainer: pl.Trainer) -> None:
        """Save a checkpoint to a temporary directory and hand it, with the metrics, to Tune."""
        from ray import tune

        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
        metrics["epoch"] = trainer.current_epoch
        with tempfile.TemporaryDirectory() as directory:
            trainer.save_checkpoint(Path(directory) / CHECKPOINT)  # the full state (optimizer too): resumable
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


def run_trial(params: dict[str, Any], fixed: list[str]) -> None:
    """One Tune trial: compose the config with the trial's values, resume from Tune's checkpoint if any, train."""
    from ray import tune

    from agent_lightning.config import compose_config
    from agent_lightning.train import train

    trial_dir = Path(tune.get_context().get_trial_dir())
    cfg = compose_config([*fixed, *(as_override(key, value) for key, value in params.items())], trial_dir / "run")
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a restored search: continue this trial where it stopped
        with open_dict(cfg):
            cfg.ckpt_path = str(Path(checkpoint.to_directory()) / CHECKPOINT)
    else:  # Tune starts this trial over (it stopped before its first report): its own earlier files go
        shutil.rmtree(trial_dir / "run", ignore_errors=True)
    with open_dict(cfg):
        cfg.test = False  # Tune compares validation metrics; the best config is tested by the user
    train(cfg, extra_callbacks=[TuneReport()])


class RayTuneSearch(Sweeper):
    """Hydra sweeper running a Ray Tune experiment (OptunaSearch + a scheduler, ASHA by default)."""

    def __init__(
        self,
        metric: str,
        mode: str,
        num_samples: int,
        max_concurrent_trials: int,
        params: dict[str, Any] | None,
        scheduler: Any = None,
        seed: int | None = None,
        points_to_evaluate: list[dict[str, Any]] | None = None,
        address: str | None = None,
        num_cpus: int | None = None,
        resources_per_trial: dict[str, float] | None = None,
        name: str = "tune",
    ) -> None:
        self.metric = metric
        self.mode = mode
        self.num_samples = num_samples
        self.max_concurrent_trials = max_concurrent_trials
        self.params = flatten(OmegaConf.to_container(params) if isinstance(params, DictConfig) else dict(params or {}))
        self.scheduler = scheduler
        self.seed = seed
        self.points_to_evaluate = [dict(p) for p in points_to_evaluate or []]
        self.address = address
        self.num_cpus = num_cpus
        self.resources_per_trial = dict(resources_per_trial or {"cpu": 1})
        self.name = name

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Keep the composed config (trials compose their own from the same overrides) and the command's job check."""
        self.config = config
        checker = JobChecker.for_sweep(hydra_context, task_function, config)
        # Trials on a Ray cluster run on its nodes: there they check their own config.
        self.job_checker = checker.composing_only() if self.address else checker
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()

    def sweep(self, arguments: list[str]) -> None:
        """Run (or resume) the Tune experiment; log and save the best config."""
        try:
            self._check(arguments)
            self._sweep(arguments)
        except ConfigError as err:
            log.error("%s", err)
            sys.exit(2)

    def _check(self, arguments: list[str]) -> None:
        if self.mode not in ("max", "min"):
            raise ConfigError(f"hydra.sweeper.mode={self.mode!r} must be 'max' or 'min'")
        # Tune compares trials on what they report after each epoch: a metric logged only at the end never arrives.
        metric = str(self.metric)
        key = "optimized_metric" if metric == self.config.get("optimized_metric") else "hydra.sweeper.metric"
        if metric.startswith(OWNED_NAMESPACES) and metric not in FIT_METRICS:
            raise ConfigError(
                f"{key}={metric} is not reported after each epoch (Ray Tune compares trials on it): use one of "
                f"{', '.join(FIT_METRICS)}"
            )
        check_direction(key, metric, "hydra.sweeper.mode", self.mode)
        for key in ("num_samples", "max_concurrent_trials"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"hydra.sweeper.{key}={value!r} must be a whole number >= 1")
        if self.config.devices not in (1, "auto") or self.config.num_nodes != 1:
            raise ConfigError(
                f"devices={self.config.devices}, num_nodes={self.config.num_nodes}: a Ray Tune trial trains in one "
                "process (GPUs: hydra.sweeper.resources_per_trial.gpu); use hparams_search=optuna for DDP trials"
            )

    def _sweep(self, arguments: list[str]) -> None:
        import ray

        space, fixed = parse_space(self.params, arguments)
        check_space(space, fixed, self.job_checker)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        if self.address:  # a cluster's nodes must have this project installed
            ray.init(address=self.address, ignore_reinit_error=True)
        else:
            # Ray starts its local workers with the driver's environment: they import this project from
            # where the driver does (a source checkout included).
            source = str(Path(agent_lightning.__file__).resolve().parent.parent)
            os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))
            ray.init(num_cpus=self.num_cpus, include_dashboard=False, ignore_reinit_error=True)
        try:
            self._run(space, fixed)
        finally:
            ray.shutdown()

    def _run(self, space: dict[str, Any], fixed: list[str]) -> None:
        from ray import tune
        from ray.tune.search.optuna import OptunaSearch

        trainable = tune.with_resources(tune.with_parameters(run_trial, fixed=fixed), self.resources_per_trial)
        experiment = self.sweep_dir / self.name
        if tune.Tuner.can_restore(experiment):
            log.info("Resuming the Tune experiment in %s", experiment)
            tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=True)
        else:
            try:
                searcher = OptunaSearch(
                    space=space,
                    metric=self.metric,
                    mode=self.mode,
                    points_to_evaluate=self.points_to_evaluate or None,
                    seed=self.seed,
                )
            except ValueError as err:  # e.g. a point that does not give every searched key
                raise ConfigError(f"hydra.sweeper.points_to_evaluate: {err}") from None
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    metric=self.metric,
                    mode=self.mode,
                    search_alg=searcher,
                    scheduler=hydra.utils.instantiate(self.scheduler) if self.scheduler else None,
                    num_samples=self.num_samples,
                    max_concurrent_trials=self.max_concurrent_trials,
                ),
                run_config=tune.RunConfig(
                    name=self.name,
                    storage_path=str(self.sweep_dir),
                    # A trial resumes from its latest checkpoint: older ones only fill the disk.
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                    verbose=1,
                ),
            )
        log.info(
            "Ray Tune search: %s, %d trials, %d at a time", list(space), self.num_samples, self.max_concurrent_trials
        )
        results = tuner.fit()
        self._summary(results)

    def _summary(self, results: Any) -> None:
        frame = results.get_dataframe()
        frame.to_csv(self.sweep_dir / "trials.csv", index=False)
        iterations = [int(r.metrics.get("training_iteration", 0)) for r in results if r.error is None]
        most = max(iterations, default=0)
        summary: dict[str, Any] = {
            "metric": self.metric,
            "mode": self.mode,
            "trials": len(results),
            "errors": results.num_errors,
            "stopped_early": sum(i < most for i in iterations),
        }
        best = results.get_best_result(metric=self.metric, mode=self.mode, scope="all") if len(results) else None
        value = best.metrics.get(self.metric) if best is not None and best.metrics else None
        if value is not None and math.isfinite(float(value)):
            row = best.metrics_dataframe
            top = row[self.metric].max() if self.mode == "max" else row[self.metric].min()
            summary.update(best_value=float(top), best_params=dict(best.config), best_trial=best.path)
            log.info("Best trial: %s = %.6g with %s", self.metric, float(top), dict(best.config))
        else:
            log.warning("No trial reported %s", self.metric)
        for result in results:
            if result.error is not None:
                log.error("Trial %s failed: %s", Path(result.path).name, str(result.error).strip().splitlines()[-1])
        OmegaConf.save(OmegaConf.create(summary), self.sweep_dir / "tune_results.yaml")
        log.info(
            "%d trials, %d stopped early by the scheduler, %d failed; summary in %s",
            summary["trials"],
            summary["stopped_early"],
            summary["errors"],
            self.sweep_dir,
        )

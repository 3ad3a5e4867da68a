"""Bayesian hyperparameter search: a Hydra sweeper on current Optuna, and trial pruning.

`-m hparams_search=optuna` selects this sweeper: it asks Optuna for each trial's values,
launches the trials as ordinary Hydra jobs (each may start its own DDP ranks), and tells Optuna
the metric every job returns. The search space uses the syntax of Hydra's Optuna sweeper plugin:
`choice(...)`, `range(...)`, `interval(...)`, `tag(log, interval(...))`.

Trials live in a storage every process can open (by default a journal file in the sweep
directory), so the ranks of a trial report `val/acc` per epoch to it and the pruner can stop a
hopeless trial; with `storage=sqlite:///...` and a study name a search resumes where it stopped.
"""

from __future__ import annotations

import csv
import logging
import math
import random
import re
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.errors import OverrideParseException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from agent_lightning.errors import ConfigError

log = logging.getLogger(__name__)
JOURNAL_PREFIX = "journal:///"
PRUNER_ATTR = "agent_lightning_pruner"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def open_storage(spec: str) -> optuna.storages.BaseStorage | str:
    """An Optuna storage from its spec: a database URL, or `journal:///<path>` for a journal file."""
    if spec.startswith(JOURNAL_PREFIX):
        path = spec.removeprefix(JOURNAL_PREFIX)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend("/" + path.lstrip("/")))
    return spec


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override (`choice`, `range`, `interval`, `tag(log, ...)`)."""
    sweep = override.value()
    key = override.get_key_element()
    if isinstance(sweep, ChoiceSweep):
        if not sweep.list:
            raise ConfigError(f"search space {key}: choice() is empty")
        return CategoricalDistribution(sweep.list)
    if isinstance(sweep, RangeSweep):
        assert sweep.start is not None and sweep.stop is not None
        values = list(sweep.range())
        if not values:
            raise ConfigError(f"search space {key}: range({sweep.start}, {sweep.stop}, {sweep.step}) is empty")
        if all(isinstance(v, int) for v in values):
            return IntDistribution(values[0], values[-1], step=int(sweep.step))
        return FloatDistribution(values[0], values[-1], step=float(sweep.step))
    if isinstance(sweep, IntervalSweep):
        assert sweep.start is not None and sweep.end is not None
        if not sweep.start < sweep.end:
            raise ConfigError(f"search space {key}: interval({sweep.start}, {sweep.end}) needs start < end")
        log_scale = "log" in sweep.tags
        if log_scale and sweep.start <= 0:
            raise ConfigError(f"search space {key}: a log interval needs start > 0, got {sweep.start}")
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return IntDistribution(sweep.start, sweep.end, log=log_scale)
        return FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale)
    raise ConfigError(f"search space {key}: {override.input_line} is not a choice, range or interval")


def parse_space(params: dict[str, Any], arguments: Sequence[str]) -> tuple[dict[str, BaseDistribution], list[str]]:
    """Search space from `hydra.sweeper.params` plus sweep overrides on the command line; other overrides stay fixed."""
    lines = [f"{key}={value}" for key, value in params.items()] + list(arguments)
    parser = OverridesParser.create()
    try:
        overrides = parser.parse_overrides(lines)
    except OverrideParseException as err:
        raise ConfigError(f"malformed search space: {err}") from None
    space: dict[str, BaseDistribution] = {}
    fixed: list[str] = []
    for override in overrides:
        if override.is_sweep_override():
            space[override.get_key_element()] = distribution(override)
        else:
            fixed.append(override.input_line)
    if not space:
        raise ConfigError(
            "nothing to search: set hydra.sweeper.params (e.g. optimizer.lr: 'tag(log, interval(1e-4, 1e-2))') "
            "or pass a sweep such as optimizer.lr=interval(1e-4,1e-2)"
        )
    return space, fixed


def build_pruner(spec: Any) -> optuna.pruners.BasePruner:
    """An Optuna pruner from its config (`_target_` and arguments); none means never prune."""
    return hydra.utils.instantiate(spec) if spec else optuna.pruners.NopPruner()


def _as_override(key: str, value: Any) -> str:
    if isinstance(value, str) and not re.fullmatch(r"[\w.\-/]+", value):
        return f"{key}='{value}'"
    return f"{key}={value}"


@dataclass(frozen=True)
class Pruned:
    """What a pruned trial's job returns instead of its metric."""

    epoch: int


class OptunaSearch(Sweeper):
    """Hydra sweeper running an Optuna study (ask/tell), with pruning and a resumable storage.

    Hydra loads plugins only from `hydra_plugins`: `hydra/sweeper=optuna` names the subclass there.
    """

    def __init__(
        self,
        sampler: Any,
        pruner: Any,
        direction: str,
        study_name: str | None,
        storage: str | None,
        n_trials: int,
        n_jobs: int,
        params: dict[str, Any] | None,
        enqueue_trials: list[dict[str, Any]] | None = None,
    ) -> None:
        self.sampler = sampler
        self.pruner = pruner
        self.direction = direction
        self.study_name = study_name
        self.storage = storage
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.params = dict(params or {})
        self.enqueue_trials = list(enqueue_trials or [])

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Keep the config and build the launcher that runs each trial as a job."""
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    def sweep(self, arguments: list[str]) -> None:
        """Run trials until the study holds `n_trials` finished ones; then write the summary."""
        try:
            self._sweep(arguments)
        except ConfigError as err:
            log.error("%s", err)
            sys.exit(2)

    def _study(self) -> tuple[optuna.Study, str]:
        if self.direction not in ("maximize", "minimize"):
            raise ConfigError(f"hydra.sweeper.direction={self.direction!r} must be 'maximize' or 'minimize'")
        if (
            not isinstance(self.n_trials, int)
            or self.n_trials < 1
            or not isinstance(self.n_jobs, int)
            or self.n_jobs < 1
        ):
            raise ConfigError(f"hydra.sweeper.n_trials={self.n_trials} and n_jobs={self.n_jobs} must be >= 1")
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        storage = self.storage or f"{JOURNAL_PREFIX}{(self.sweep_dir / 'optuna.journal').resolve()}"
        for attempt in range(5):
            try:
                study = optuna.create_study(
                    study_name=self.study_name,
                    storage=open_storage(storage),
                    sampler=hydra.utils.instantiate(self.sampler) if self.sampler else None,
                    pruner=build_pruner(self.pruner),
                    direction=self.direction,
                    load_if_exists=True,
                )
                break
            except SQLAlchemyError:
                # Searches started together race to create a new database's tables: the loser retries.
                if attempt == 4:
                    raise
                time.sleep(0.5 + random.random())
        # Trials run in other processes: they rebuild the pruner from the study itself.
        pruner_spec = OmegaConf.to_container(self.pruner, resolve=True) if self.pruner else None
        study.set_user_attr(PRUNER_ATTR, pruner_spec)
        return study, storage

    def _sweep(self, arguments: list[str]) -> None:
        space, fixed = parse_space(self.params, arguments)
        study, storage = self._study()
        finished = [t for t in study.trials if t.state in FINISHED]
        if finished:
            log.info("Study %s resumes with %d finished trials", study.study_name, len(finished))
        for params in self.enqueue_trials:
            study.enqueue_trial(dict(params), skip_if_exists=True)
        log.info("Optuna study %s (%s): %s in %s", study.study_name, self.direction, list(space), self.sweep_dir)

        while (remaining := self.n_trials - sum(t.state in FINISHED for t in study.trials)) > 0:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, remaining))]
            # A job reopens its trial as `optuna.trial.Trial(study, trial_id)`: the storage's key for
            # it (`_trial_id`; `number` counts within the study), which Optuna has no public getter for.
            batch = [
                [
                    *fixed,
                    *(_as_override(key, value) for key, value in trial.params.items()),
                    f"optuna_trial.storage='{storage}'",
                    f"optuna_trial.study_name='{study.study_name}'",
                    f"optuna_trial.trial_id={trial._trial_id}",
                ]
                for trial in trials
            ]
            self.validate_batch_is_legal(batch)
            returns = self.launcher.launch(batch, initial_job_idx=trials[0].number)
            for trial, ret in zip(trials, returns, strict=True):
                self._tell(study, trial, ret)
        write_summary(study, self.sweep_dir)

    def _tell(self, study: optuna.Study, trial: optuna.trial.Trial, ret: Any) -> None:
        try:
            value = ret.return_value
        except Exception as err:  # a failed job fails its trial, not the whole search
            study.tell(trial, state=TrialState.FAIL)
            log.error("Trial %d failed: %s", trial.number, err)
            return
        if isinstance(value, Pruned):
            study.tell(trial, state=TrialState.PRUNED)
            log.info("Trial %d: %s -> pruned after epoch %d", trial.number, trial.params, value.epoch)
            return
        if value is None or not math.isfinite(float(value)):
            study.tell(trial, state=TrialState.FAIL)
            log.error("Trial %d returned %r: no finite value for the optimized metric", trial.number, value)
            return
        study.tell(trial, float(value))
        log.info("Trial %d: %s -> %.6g", trial.number, trial.params, float(value))


def write_summary(study: optuna.Study, sweep_dir: Path) -> None:
    """Log the best trial; write optimization_results.yaml, trials.csv and optimization_history.png."""
    completed = [t for t in study.trials if t.state == TrialState.COMPLETE]
    counts = {state.name.lower(): sum(t.state == state for t in study.trials) for state in TrialState}
    results: dict[str, Any] = {"name": study.study_name, "direction": study.direction.name.lower(), "trials": counts}
    if completed:
        best = study.best_trial
        results.update(best_value=best.value, best_params=best.params, best_trial=best.number)
        log.info("Best trial %d: %s = %.6g with %s", best.number, "value", best.value, best.params)
    else:
        log.warning("No trial of study %s completed", study.study_name)
    OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")

    names = sorted({name for t in study.trials for name in t.params})
    with open(sweep_dir / "trials.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["number", "state", "value", *names, "last_epoch_reported", "duration_s"])
        for t in study.trials:
            duration = t.duration.total_seconds() if t.duration else ""
            last = max(t.intermediate_values) if t.intermediate_values else ""
            writer.writerow([t.number, t.state.name, t.value, *(t.params.get(n, "") for n in names), last, duration])

    if completed:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization.matplotlib import plot_optimization_history

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            ax = plot_optimization_history(study)
        ax.figure.savefig(sweep_dir / "optimization_history.png", dpi=100, bbox_inches="tight")
        plt.close(ax.figure)
    log.info("Search summary in %s", sweep_dir)


class OptunaPruning(pl.Callback):
    """Reports a metric to the trial after every validation and stops the run when the pruner says so.

    Rank 0 talks to the study storage; its decision is broadcast so all ranks stop together.
    """

    def __init__(self, storage: str, study_name: str, trial_id: int, monitor: str = "val/acc") -> None:
        self.storage = storage
        self.study_name = study_name
        self.trial_id = trial_id
        self.monitor = monitor
        self.pruned_at_epoch: int | None = None
        self._trial: optuna.trial.Trial | None = None

    def _get_trial(self) -> optuna.trial.Trial:
        if self._trial is None:
            storage = open_storage(self.storage)
            spec = optuna.load_study(study_name=self.study_name, storage=storage).user_attrs.get(PRUNER_ATTR)
            study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=build_pruner(spec))
            self._trial = optuna.trial.Trial(study, self.trial_id)
        return self._trial

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Report this epoch's metric; decide on rank 0 whether to prune, and stop every rank if so."""
        if trainer.sanity_checking:
            return
        prune = False
        if trainer.is_global_zero:
            value = trainer.callback_metrics.get(self.monitor)
            if value is None:
                raise ConfigError(f"optuna_trial.monitor={self.monitor!r} was not logged; pruning needs it")
            trial = self._get_trial()
            trial.report(float(value), step=trainer.current_epoch)
            prune = trial.should_prune()
        if trainer.strategy.broadcast(prune, src=0):
            self.pruned_at_epoch = trainer.current_epoch
            trainer.should_stop = True

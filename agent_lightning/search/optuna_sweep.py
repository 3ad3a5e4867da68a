"""Bayesian hyperparameter search: a Hydra sweeper running an Optuna study (ask/tell).

`-m hparams_search=optuna` selects this sweeper: it asks Optuna for each trial's values,
launches the trials as ordinary Hydra jobs (each may start its own DDP ranks), and tells Optuna
the metric every job returns. With a launcher that runs jobs in other processes
(`hydra/launcher=joblib`, `submitit_slurm`) up to `n_jobs` trials run at once, and a new trial
starts as soon as one finishes. A space holding a value no trial can run is refused before the
first trial (`space_check.py`); a trial whose config is refused all the same (by a combination of
values), or whose job fails, is recorded as `FAIL` with its error and the search goes on.

Trials live in a storage every process can open (by default a journal file in the sweep
directory), so the ranks of a trial report the optimized metric (`optuna_trial.monitor`) after each
validation to it and the pruner can stop a hopeless trial; with `storage=sqlite:///...` and a study
name a search resumes where it stopped: trials of a killed search are failed and rerun (see
`storage.py`), and the sampler is seeded from the number of trials already in the study, so a
resumed search does not repeat itself.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import hydra
import optuna
from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from agent_lightning.errors import ConfigError
from agent_lightning.search.pruning import Pruned
from agent_lightning.search.space import as_override, flatten, parse_space
from agent_lightning.search.space_check import check_enqueued, check_space
from agent_lightning.search.storage import (
    JOURNAL_PREFIX,
    PRUNER_ATTR,
    Heartbeat,
    build_pruner,
    fail_stale_trials,
    open_storage,
)
from agent_lightning.search.summary import RUN_DIR_ATTR, write_summary
from agent_lightning.search.sweep_dir import STUDY_KEY, check_trial_dirs_free
from agent_lightning.sweep_jobs import JobChecker, JobRefusedError
from agent_lightning.validation import check_direction, metric_direction, pruning_monitor

log = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class TrialFailedError(Exception):
    """A trial's job stopped with an error instead of returning its metric."""


class _LastError(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.message = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.message = record.getMessage()


class CatchExit:
    """The task function of one trial: a job that exits (bad config: exit code 2) fails its trial, not the search.

    Hydra's launchers record an exception raised by a job, but `sys.exit` would end the whole search.
    """

    def __init__(self, task_function: TaskFunction) -> None:
        self.task_function = task_function

    def __call__(self, cfg: DictConfig) -> Any:
        """Run the job; turn its `SystemExit` into `TrialFailedError` carrying the error it logged."""
        last_error = _LastError()
        logging.getLogger().addHandler(last_error)
        try:
            return self.task_function(cfg)
        except SystemExit as stop:
            raise TrialFailedError(last_error.message or f"the job exited with code {stop.code}") from None
        finally:
            logging.getLogger().removeHandler(last_error)


class _InThisThread:
    """Runs each job when it is submitted, in the calling thread (a launcher running jobs in-process)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as err:
            future.set_exception(err)
        return future

    def shutdown(self) -> None:
        pass


class OptunaSearch(Sweeper):
    """Hydra sweeper running an Optuna study (ask/tell), with pruning, parallel trials and a resumable storage."""

    def __init__(
        self,
        sampler: Any,
        pruner: Any,
        direction: str,
        study_name: str | None,
        storage: str | None,
        n_trials: int,
        n_jobs: int | None,
        params: dict[str, Any] | None,
        enqueue_trials: list[dict[str, Any]] | None = None,
        heartbeat_interval: int | None = 30,
        grace_period: int | None = None,
        stale_retries: int = 1,
        max_failures: int = 5,
    ) -> None:
        self.sampler = sampler
        self.pruner = pruner
        self.direction = direction
        self.study_name = study_name
        self.storage = storage
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.params = flatten(OmegaConf.to_container(params) if isinstance(params, DictConfig) else dict(params or {}))
        self.enqueue_trials = list(enqueue_trials or [])
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.stale_retries = stale_retries
        self.max_failures = max_failures

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Keep the config and build the launcher that runs each trial as a job."""
        self.config = config
        self.hydra_context = hydra_context
        self.job_checker = JobChecker.for_sweep(hydra_context, task_function, config)
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=CatchExit(task_function), config=config
        )
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    def sweep(self, arguments: list[str]) -> None:
        """Run trials until the study holds `n_trials` finished ones; then write the summary."""
        try:
            self._sweep(arguments)
        except ConfigError as err:
            log.error("%s", err)
            sys.exit(2)

    def _check_settings(self) -> None:
        if self.direction not in ("maximize", "minimize"):
            raise ConfigError(f"hydra.sweeper.direction={self.direction!r} must be 'maximize' or 'minimize'")
        for key in ("n_trials", "max_failures", "stale_retries", "n_jobs", "heartbeat_interval", "grace_period"):
            value = getattr(self, key)
            optional = key in ("n_jobs", "heartbeat_interval", "grace_period")
            low = 0 if key == "stale_retries" else 1
            whole = isinstance(value, int) and not isinstance(value, bool)
            if (value is None and optional) or (whole and value >= low):
                continue
            raise ConfigError(f"hydra.sweeper.{key}={value!r} must be a whole number >= {low}")
        self._check_direction()

    def _check_direction(self) -> None:
        # A study that minimises an accuracy, or prunes on a loss while maximising, ranks trials upside down.
        check_direction("optimized_metric", self._metric(), "hydra.sweeper.direction", self.direction)
        better = {"maximize": "higher", "minimize": "lower"}
        chosen = OmegaConf.select(self.config, "optuna_trial.monitor", default=None)
        pruned_by = metric_direction(str(chosen)) if chosen and self.pruner else None  # a default follows the study
        if pruned_by and pruned_by != self.direction:
            raise ConfigError(
                f"optuna_trial.monitor={chosen} is better {better[pruned_by]} but the study's direction is "
                f"{self.direction}: the pruner would stop the best trials; leave optuna_trial.monitor=null (the "
                "optimized metric where validation logs it) or name one better the same way"
            )

    def _monitor(self) -> str:
        """What every trial reports for pruning: the same metric for all, better the study's way."""
        return pruning_monitor(self.config, self.direction)

    def _study(self) -> tuple[optuna.Study, str, optuna.storages.BaseStorage]:
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        spec = self.storage or f"{JOURNAL_PREFIX}{(self.sweep_dir / 'optuna.journal').resolve()}"
        for attempt in range(5):
            try:
                storage = open_storage(spec, self.heartbeat_interval, self.grace_period, self.stale_retries)
                study = optuna.create_study(
                    study_name=self.study_name,
                    storage=storage,
                    pruner=build_pruner(self.pruner),
                    direction=self.direction,
                    load_if_exists=True,
                )
                break
            except SQLAlchemyError as err:
                # Searches started together race to create a new database's tables: the loser retries. A URL
                # no driver reads, or a file that is not a database, fails alike every time: said at once.
                unreadable = isinstance(err, NoSuchModuleError | ArgumentError) or "not a database" in str(err)
                if attempt == 4 or unreadable:
                    raise ConfigError(
                        f"hydra.sweeper.storage={spec} cannot hold the study ({type(err).__name__}: "
                        f"{str(err).strip().splitlines()[0]}): give an Optuna storage, e.g. sqlite:///search.db"
                    ) from None
                time.sleep(0.5 + random.random())
        # Trials run in other processes: they rebuild the pruner from the study itself.
        pruner_spec = OmegaConf.to_container(self.pruner, resolve=True) if self.pruner else None
        study.set_user_attr(PRUNER_ATTR, pruner_spec)
        return study, spec, storage

    def _reseed(self, study: optuna.Study) -> None:
        # A fixed seed would make a resumed (or a second) search propose the first trials' values
        # again: offset it by the number of trials the study already holds.
        if not self.sampler:  # Optuna's default sampler, unseeded
            return
        seed = self.sampler.get("seed")
        started = sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))
        offset = {} if seed is None else {"seed": int(seed) + started}
        try:
            study.sampler = hydra.utils.instantiate(self.sampler, **offset)
        except Exception as err:  # a target that does not exist, an argument it does not take
            cause = err.__cause__ or err
            raise ConfigError(f"hydra.sweeper.sampler: {' '.join(str(cause).split())[:300]}") from None

    def _slots(self) -> int:
        # Hydra's basic launcher runs a job in this process, so its trials run one at a time.
        if isinstance(self.launcher, BasicLauncher):
            if self.n_jobs not in (None, 1):
                log.warning("hydra.sweeper.n_jobs=%s: the basic launcher runs one trial at a time", self.n_jobs)
            return 1
        if self.n_jobs is not None:
            return self.n_jobs
        launcher_jobs = OmegaConf.select(self.config, "hydra.launcher.n_jobs", default=1)
        if launcher_jobs == -1:
            import joblib

            return joblib.cpu_count()
        return int(launcher_jobs)

    def _sweep(self, arguments: list[str]) -> None:
        # Optuna warns on each `ask` from a storage with heartbeats: the trials' heartbeats are this sweeper's own
        # (`storage.Heartbeat`). Set for this process once: a filter changed around each `ask` is not thread-safe.
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        space, fixed = parse_space(self.params, arguments)
        self._check_settings()
        sweep = OmegaConf.select(self.config, "hydra.sweep", default=None)  # its subdir unresolved: its pattern
        subdir = OmegaConf.to_container(sweep, resolve=False).get("subdir") if sweep is not None else None
        check_trial_dirs_free(self.sweep_dir, subdir, self.study_name)
        check_space(space, fixed, self.job_checker)
        check_enqueued(self.enqueue_trials, space, fixed, self.job_checker)
        study, spec, storage = self._study()
        stale = fail_stale_trials(study)
        if stale:
            log.warning("Trials %s had stopped (their search was killed): marked FAIL, rerun with their values", stale)
        finished = [t for t in study.trials if t.state in FINISHED]
        if finished:
            log.info("Study %s resumes with %d finished trials", study.study_name, len(finished))
        for params in self.enqueue_trials:
            study.enqueue_trial(dict(params), skip_if_exists=True)
        slots = self._slots()
        log.info(
            "Optuna study %s (%s): %s in %s, %d trial(s) at a time",
            study.study_name,
            self.direction,
            list(space),
            self.sweep_dir,
            slots,
        )
        pool = _InThisThread() if slots == 1 else ThreadPoolExecutor(max_workers=slots, thread_name_prefix="trial")
        in_flight: dict[Future, optuna.trial.Trial] = {}
        failures, stopping = 0, False
        with Heartbeat(storage) as heartbeat:
            try:
                while True:
                    # After max_failures in a row no trial starts; those running finish and are told.
                    stopping = stopping or failures >= self.max_failures
                    while not stopping and len(in_flight) < slots and self._remaining(study) > len(in_flight):
                        trial = self._ask(study, space)
                        heartbeat.add(trial._trial_id)  # at once: a trial without a heartbeat is never stale
                        overrides = self._overrides(trial, fixed, spec, study.study_name)
                        error = self._composition_error(overrides)
                        if error:
                            failures = self._fail(study, trial, error, failures)
                            heartbeat.remove(trial._trial_id)
                            stopping = failures >= self.max_failures
                            continue
                        in_flight[pool.submit(self._launch, trial, overrides)] = trial
                    if not in_flight:
                        break
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        trial = in_flight.pop(future)
                        failures = self._tell(study, trial, future, failures)
                        heartbeat.remove(trial._trial_id)
                    for number in fail_stale_trials(study):
                        log.warning("Trial %d had stopped (its search was killed): marked FAIL, rerun", number)
            finally:
                pool.shutdown()
        if stopping:
            log.error("%d trials failed in a row (hydra.sweeper.max_failures): search stopped", self.max_failures)
            write_summary(study, self.sweep_dir, self._metric())
            sys.exit(1)
        running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        if running:
            log.info("Trials %s are still running in another search process (or are stale: rerun later)", running)
        write_summary(study, self.sweep_dir, self._metric())

    def _metric(self) -> str:
        """The name of what the trials return (the run's `optimized_metric`), for the log."""
        return str(OmegaConf.select(self.config, "optimized_metric", default=None) or "value")

    def _remaining(self, study: optuna.Study) -> int:
        return self.n_trials - sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))

    def _ask(self, study: optuna.Study, space: dict[str, BaseDistribution]) -> optuna.trial.Trial:
        self._reseed(study)
        return study.ask(space)

    def _overrides(self, trial: optuna.trial.Trial, fixed: list[str], spec: str, study_name: str) -> list[str]:
        # A job reopens its trial as `optuna.trial.Trial(study, trial_id)`: the storage's key for
        # it (`_trial_id`; `number` counts within the study), which Optuna has no public getter for.
        return [
            *fixed,
            *(as_override(key, value) for key, value in trial.params.items()),
            f"optuna_trial.storage='{spec}'",
            f"{STUDY_KEY}'{study_name}'",
            f"optuna_trial.trial_id={trial._trial_id}",
            f"optuna_trial.monitor={self._monitor()}",
        ]

    def _composition_error(self, overrides: list[str]) -> str | None:
        # A value naming a missing config (e.g. optimizer=adamx) fails inside the launcher, for the
        # whole batch: compose each trial's config here first, and fail only that trial.
        try:
            self.job_checker.composing_only()(overrides)
        except JobRefusedError as refused:
            return refused.line
        except Exception as err:
            return str(err).splitlines()[0] if str(err) else type(err).__name__
        return None

    def _launch(self, trial: optuna.trial.Trial, overrides: list[str]) -> JobReturn:
        # Runs in a worker thread when trials run in parallel: the config was composed (checked) already.
        return self.launcher.launch([overrides], initial_job_idx=trial.number)[0]

    def _fail(self, study: optuna.Study, trial: optuna.trial.Trial, error: str, failures: int) -> int:
        trial.set_user_attr("error", error[:2000])
        study.tell(trial, state=TrialState.FAIL)
        log.error("Trial %d %s failed: %s", trial.number, trial.params, error)
        return failures + 1

    def _tell(self, study: optuna.Study, trial: optuna.trial.Trial, future: Future, failures: int) -> int:
        try:
            job = future.result()
            run_dir = OmegaConf.select(job.hydra_cfg, "hydra.runtime.output_dir") if job.hydra_cfg else None
            if run_dir:  # where its checkpoints and metrics are, for the summary's best trial
                trial.set_user_attr(RUN_DIR_ATTR, str(run_dir))
            value = job.return_value
        except Exception as err:  # a failed job fails its trial, not the whole search
            return self._fail(study, trial, str(err) or type(err).__name__, failures)
        if isinstance(value, Pruned):
            study.tell(trial, state=TrialState.PRUNED)
            log.info("Trial %d: %s -> pruned after epoch %d", trial.number, trial.params, value.epoch)
            return 0
        if value is None or not math.isfinite(float(value)):
            return self._fail(study, trial, f"returned {value!r}: no finite value for the optimized metric", failures)
        study.tell(trial, float(value))
        log.info("Trial %d: %s -> %.6g", trial.number, trial.params, float(value))
        return 0

"""Registers `hydra/sweeper=agent_optuna`: agent_lightning's Optuna sweeper (Optuna >= 4).

Its own name, so that it never clashes with Hydra's `optuna` sweeper plugin (which pins Optuna < 3).
Hydra imports every module here on each start, so this one must not import Optuna: the sweeper
loads `agent_lightning.search` only when a search runs.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    """agent_lightning's Optuna sweeper (Hydra instantiates plugins only from `hydra_plugins`)."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Build the search (importing Optuna now) and its launcher."""
        from agent_lightning.search.optuna_sweep import OptunaSearch

        self.search = OptunaSearch(**self.settings)
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        """Run the search."""
        return self.search.sweep(arguments)


@dataclass
class OptunaSweeperConf:
    """Settings of `hydra.sweeper` when it is the Optuna sweeper."""

    _target_: str = f"{OptunaSweeper.__module__}.{OptunaSweeper.__qualname__}"
    # The sweeper builds the sampler and pruner itself, and hands the pruner's config to the trials.
    _recursive_: bool = False
    # Any optuna.samplers class, e.g. TPESampler (the default), RandomSampler, CmaEsSampler. A seed is
    # offset by the number of trials already in the study, so a resumed search does not repeat itself.
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None})
    # Any optuna.pruners class, or null for none.
    pruner: Any = field(default_factory=lambda: {"_target_": "optuna.pruners.MedianPruner"})
    direction: str = "maximize"
    # A name and a storage URL (sqlite:///search.db) make the study persistent and shareable.
    study_name: Any = None
    storage: Any = None
    # Finished trials the study should hold; a resumed study only runs the missing ones.
    n_trials: int = 20
    # Trials running at once (null: as many as the launcher runs at once, e.g. hydra.launcher.n_jobs).
    n_jobs: Any = None
    # The search space: key -> choice(...), range(...), interval(...) or tag(log, interval(...)).
    params: Any = None
    # Parameter sets to try first, e.g. settings known to be good.
    enqueue_trials: Any = None
    # Database storages: each running trial records a heartbeat every heartbeat_interval seconds; a
    # trial silent for grace_period (default 2 x interval) belonged to a killed search: it is marked
    # FAIL and rerun stale_retries times with the same values.
    heartbeat_interval: Any = 30
    grace_period: Any = None
    stale_retries: int = 1
    # The search stops (exit code 1) after this many failed trials in a row.
    max_failures: int = 5


ConfigStore.instance().store(
    group="hydra/sweeper", name="agent_optuna", node=OptunaSweeperConf, provider="agent_lightning"
)

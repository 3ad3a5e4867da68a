"""Registers `hydra/sweeper=optuna`: agent_lightning's Optuna sweeper (Optuna >= 4)."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from agent_lightning import search


class OptunaSweeper(search.OptunaSearch):
    """agent_lightning's Optuna sweeper (Hydra instantiates plugins only from `hydra_plugins`)."""


@dataclass
class OptunaSweeperConf:
    """Settings of `hydra.sweeper` when it is the Optuna sweeper."""

    _target_: str = f"{OptunaSweeper.__module__}.{OptunaSweeper.__qualname__}"
    # The sweeper builds the sampler and pruner itself, and hands the pruner's config to the trials.
    _recursive_: bool = False
    # Any optuna.samplers class, e.g. TPESampler (the default), RandomSampler, CmaEsSampler.
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None})
    # Any optuna.pruners class, or null for none.
    pruner: Any = field(default_factory=lambda: {"_target_": "optuna.pruners.MedianPruner"})
    direction: str = "maximize"
    # A name and a storage URL (sqlite:///search.db) make the study persistent and shareable.
    study_name: Any = None
    storage: Any = None
    # Finished trials the study should hold; a resumed study only runs the missing ones.
    n_trials: int = 20
    # Trials asked for and launched together.
    n_jobs: int = 1
    # The search space: key -> choice(...), range(...), interval(...) or tag(log, interval(...)).
    params: Any = None
    # Parameter sets to try first, e.g. settings known to be good.
    enqueue_trials: Any = None


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="agent_lightning")

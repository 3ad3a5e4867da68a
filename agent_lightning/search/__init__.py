"""Hyperparameter search: an Optuna sweeper for Hydra, trial pruning, and Ray Tune.

Importing this package imports Optuna: the rest of the project imports it only when a search runs.
"""

from agent_lightning.search.optuna_sweep import OptunaSearch, TrialFailedError
from agent_lightning.search.pruning import OptunaPruning, Pruned
from agent_lightning.search.space import parse_space

__all__ = ["OptunaPruning", "OptunaSearch", "Pruned", "TrialFailedError", "parse_space"]

"""A search space checked before the first trial: every choice, and both ends of every range and interval."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from agent_lightning.errors import ConfigError
from agent_lightning.search.space import as_override
from agent_lightning.sweep_jobs import JobChecker, JobRefusedError


def probe_values(distribution: BaseDistribution) -> list[Any]:
    """The values of `distribution` a check tries: every choice, or the two ends of a range or interval."""
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, (IntDistribution, FloatDistribution)):
        return [distribution.low, distribution.high]
    return []


def check_space(space: dict[str, BaseDistribution], fixed: Sequence[str], check: JobChecker) -> None:
    """Refuse (ConfigError) a space with a value no trial could run, naming the key and the value.

    Each value is tried with the other searched keys as the config sets them. A value is refused when its
    config cannot be composed, or when the run's own check refuses it naming this key (a refusal naming
    another key may come from that key's config value, which trials replace). When every value is refused
    with the same line, the search's fixed settings are at fault: no trial could run, and that line is raised.
    """
    probes, others = 0, []
    for key, distribution in space.items():
        for value in probe_values(distribution):
            setting = as_override(key, value)
            probes += 1
            try:
                check([*fixed, setting])
            except JobRefusedError as refused:
                if refused.composing or _names(refused.line, key):
                    raise ConfigError(f"search space {key}: no trial can run {setting}: {refused.line}") from None
                others.append(refused.line)
    if probes and len(others) == probes and len(set(others)) == 1:
        raise ConfigError(f"{others[0]} (every value of the search space is refused so: no trial can run)")


def check_enqueued(
    trials: Sequence[dict[str, Any]], space: dict[str, BaseDistribution], fixed: Sequence[str], check: JobChecker
) -> None:
    """Refuse (ConfigError) an enqueued trial (`hydra.sweeper.enqueue_trials`) whose values cannot run."""
    for index, params in enumerate(trials):
        # Optuna fixes only the searched keys to an enqueued trial's values.
        settings = [as_override(key, value) for key, value in params.items() if key in space]
        try:
            check([*fixed, *settings])
        except JobRefusedError as refused:
            raise ConfigError(f"hydra.sweeper.enqueue_trials[{index}] ({' '.join(settings)}): {refused.line}") from None


def _names(line: str, key: str) -> bool:
    # `optimizer.lr` names `optimizer.lr=-1` and `optimizer` names `optimizer.betas`, but not `optimizer_x`.
    return re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", line) is not None

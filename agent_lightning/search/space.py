"""Search spaces in the syntax of Hydra's Optuna sweeper (`choice`, `range`, `interval`, `tag(log, ...)`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.errors import OverrideParseException
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from agent_lightning.errors import ConfigError


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


def as_override(key: str, value: Any) -> str:
    """A command-line override setting `key` to one sampled `value`."""
    if isinstance(value, str) and not re.fullmatch(r"[\w.\-/]+", value):
        return f"{key}='{value}'"
    return f"{key}={value}"


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{'model': {'num_layers': 'range(1,3)'}}` -> `{'model.num_layers': 'range(1,3)'}` (dotted keys from the CLI)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat

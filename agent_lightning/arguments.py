"""Up-front checks of the plain keys of `prepare`, `collect` and `evaluate`: one line per bad value.

The same shape as `validation.RULES` for training (key, test, what is valid), kept here because
`validation` imports torch and Lightning: seconds that a `prepare` command should not wait.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from agent_lightning.errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """A key, the test its value must pass, and what is valid (for the message)."""

    key: str
    check: Callable[[Any], bool]
    valid: str


def whole(low: int, high: float = math.inf, also: tuple[Any, ...] = ()) -> Callable[[Any], bool]:
    """A whole number in [low, high) (not a bool), or one of `also` (e.g. None)."""

    def check(value: Any) -> bool:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):  # numpy integers too
            return low <= value < high or value in also
        return any(value is a for a in also)

    return check


def fraction(value: Any) -> bool:
    """A number in [0, 1)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value < 1  # NaN fails


def boolean(value: Any) -> bool:
    """A bool: `overwrite=no` on the command line is the string 'no', which is truthy."""
    return isinstance(value, bool)


def path(value: Any) -> bool:
    """A non-empty path (an empty one would mean the working directory)."""
    return isinstance(value, str | Path) and str(value).strip() != ""


def column_name(value: Any) -> Any:
    """A column named by a number (`label=3` on the command line, a header `0,1,2`) as the text it is."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def name_or_none(value: Any) -> bool:
    """A non-empty name, or None."""
    return value is None or (isinstance(value, str) and value != "")


def choice(*choices: str) -> Callable[[Any], bool]:
    """Exactly one of `choices` (strings)."""
    return lambda value: isinstance(value, str) and value in choices


SEED = whole(0, 2**32)
SEED_VALID = "a whole number in [0, 4294967295]"


def check_arguments(values: Mapping[str, Any], rules: Sequence[Rule]) -> None:
    """ConfigError naming the first key of `rules` whose value in `values` is invalid, and what is valid."""
    for rule in rules:
        if rule.key not in values:
            continue
        value = values[rule.key]
        if isinstance(value, ListConfig | DictConfig):
            value = OmegaConf.to_container(value)
        if not rule.check(value) and rule.check is boolean:
            raise ConfigError(f"{rule.key}={value!r} must be true or false")
        if not rule.check(value):
            raise ConfigError(f"{rule.key}={value!r} is invalid: use {rule.valid}")

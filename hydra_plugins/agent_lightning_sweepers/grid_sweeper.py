"""Registers `hydra/sweeper=grid`: Hydra's basic grid sweeper, refusing a sweep with no values."""

import logging
import sys
from dataclasses import dataclass
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser

log = logging.getLogger(__name__)


class GridSweeper(BasicSweeper):
    """The basic sweeper, except that an empty sweep is an error instead of zero silent jobs."""

    def sweep(self, arguments: list[str]) -> Any:
        """Check every swept key has at least one value, then sweep the grid as usual."""
        lines = [f"{key}={value}" for key, value in self.params.items()] + list(arguments)
        for override in OverridesParser.create().parse_overrides(lines):
            if override.is_sweep_override() and not list(override.sweep_string_iterator()):
                log.error("empty grid: %s gives no value to run", override.input_line)
                sys.exit(2)
        return super().sweep(arguments)


@dataclass
class GridSweeperConf(BasicSweeperConf):
    """Settings of `hydra.sweeper` when it is the grid sweeper."""

    _target_: str = f"{GridSweeper.__module__}.{GridSweeper.__qualname__}"


ConfigStore.instance().store(group="hydra/sweeper", name="grid", node=GridSweeperConf, provider="agent_lightning")

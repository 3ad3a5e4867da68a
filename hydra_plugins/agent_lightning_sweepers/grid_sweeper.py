"""Registers `hydra/sweeper=grid`: Hydra's basic grid sweeper, refusing an empty sweep or a bad job before any runs."""

import logging
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict, read_write

log = logging.getLogger(__name__)


class GridSweeper(BasicSweeper):
    """The basic sweeper, refusing an empty sweep and checking every job's config before the first starts.

    Hydra would run zero jobs for an empty sweep, and stop a grid at its first bad job, after training
    the jobs before it.
    """

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Keep the command's own check of one job's config (`hydra_command(check_job=...)`), if it has one."""
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.check_job = getattr(task_function, "check_job", None)

    def sweep(self, arguments: list[str]) -> Any:
        """Check every swept key has at least one value and every job's config, then sweep the grid as usual."""
        lines = [f"{key}={value}" for key, value in self.params.items()] + list(arguments)
        overrides = OverridesParser.create().parse_overrides(lines)
        for override in overrides:
            if override.is_sweep_override() and not list(override.sweep_string_iterator()):
                log.error("empty grid: %s gives no value to run", override.input_line)
                sys.exit(2)
        if self.check_job is not None:
            self._check_jobs(overrides)
        return super().sweep(arguments)

    def _check_jobs(self, overrides: list[Override]) -> None:
        from agent_lightning.errors import user_facing

        jobs = [job for batch in self.split_arguments(overrides, None) for job in batch]
        quiet = logging.getLogger("agent_lightning")
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # the jobs log what they resolve when they run
        try:
            for number, job in enumerate(jobs):
                try:
                    cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(job))
                except Exception:
                    continue  # Hydra reports a config it cannot compose, its own way, before any job runs
                with tempfile.TemporaryDirectory() as scratch:
                    # A job's directory is made (and checked) when it runs: a refused grid writes nothing.
                    with read_write(cfg), open_dict(cfg):
                        del cfg["hydra"]
                        cfg.paths.output_dir = scratch
                    try:
                        self.check_job(cfg)
                    except Exception as err:
                        reported = user_facing(err)
                        if reported is None:
                            raise  # a bug: its traceback
                        where = f"grid job {number} of {len(jobs)} ({' '.join(job)})"
                        log.error("%s: %s; no job was started", where, reported[1])
                        sys.exit(reported[0])
        finally:
            quiet.setLevel(level)


@dataclass
class GridSweeperConf(BasicSweeperConf):
    """Settings of `hydra.sweeper` when it is the grid sweeper."""

    _target_: str = f"{GridSweeper.__module__}.{GridSweeper.__qualname__}"


ConfigStore.instance().store(group="hydra/sweeper", name="grid", node=GridSweeperConf, provider="agent_lightning")

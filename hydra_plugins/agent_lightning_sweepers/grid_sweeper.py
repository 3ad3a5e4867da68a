"""Registers `hydra/sweeper=grid`: Hydra's basic grid sweeper, refusing an empty sweep or a bad job before any runs."""

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from agent_lightning.sweep_jobs import JobChecker, JobRefusedError

log = logging.getLogger(__name__)


class GridSweeper(BasicSweeper):
    """The basic sweeper, refusing an empty sweep and checking every job's config before the first starts.

    Hydra would run zero jobs for an empty sweep, and stop a grid at its first bad job, after training
    the jobs before it.
    """

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Keep the command's own check of one job's config, if it has one."""
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.job_checker = JobChecker.for_sweep(hydra_context, task_function, config)
        self._composed = False  # every job composed (and checked) by `_check_jobs`

    def sweep(self, arguments: list[str]) -> Any:
        """Check every swept key has at least one value and every job's config, then sweep the grid as usual."""
        lines = [f"{key}={value}" for key, value in self.params.items()] + list(arguments)
        overrides = OverridesParser.create().parse_overrides(lines)
        for override in overrides:
            if override.is_sweep_override() and not list(override.sweep_string_iterator()):
                log.error("empty grid: %s gives no value to run", override.input_line)
                sys.exit(2)
        resumes = any(
            override.key_or_group == "ckpt_path" and str(override.value()) not in ("", "None", "null")
            for override in overrides
        )
        jobs = [job for batch in self.split_arguments(overrides, None) for job in batch]
        if not resumes and not self.config.get("ckpt_path"):
            self._check_sweep_dir(len(jobs))  # a grid that resumes its jobs writes into their runs on purpose
        self._check_jobs(jobs)
        self._composed = True
        return super().sweep(arguments)

    def _check_sweep_dir(self, jobs: int) -> None:
        # Rerun into an earlier sweep's directory, each job would replace that job's checkpoints, config and log.
        # Only the job directories Hydra numbers (`hydra.sweep.subdir`'s default) are known before the jobs run.
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        subdir = OmegaConf.to_container(self.config.hydra.sweep, resolve=False).get("subdir")
        if subdir != "${hydra.job.num}" or not sweep_dir.is_dir():
            return
        earlier = sorted(p for n in range(jobs) for p in (sweep_dir / str(n)).glob("checkpoints/*.ckpt"))
        if earlier:
            log.error(
                "hydra.sweep.dir=%s holds an earlier sweep's runs (%s): choose another hydra.sweep.dir (each job "
                "would replace its run); no job was started",
                sweep_dir,
                earlier[0],
            )
            sys.exit(2)

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Hydra composes each batch's jobs before launching them: here every job was composed and checked already."""
        if not self._composed:
            super().validate_batch_is_legal(batch)

    def _check_jobs(self, jobs: list[list[str]]) -> None:
        for number, job in enumerate(jobs):
            try:
                self.job_checker(job)
            except JobRefusedError as refused:
                log.error("grid job %d of %d (%s): %s; no job was started", number, len(jobs), " ".join(job), refused)
                sys.exit(2)


@dataclass
class GridSweeperConf(BasicSweeperConf):
    """Settings of `hydra.sweeper` when it is the grid sweeper."""

    _target_: str = f"{GridSweeper.__module__}.{GridSweeper.__qualname__}"


ConfigStore.instance().store(group="hydra/sweeper", name="grid", node=GridSweeperConf, provider="agent_lightning")

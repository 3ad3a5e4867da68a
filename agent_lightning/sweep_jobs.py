"""A sweep's jobs checked before any starts, without running them or writing anything.

Each job's config is composed as Hydra will compose it, then checked by the command's own check
(`hydra_command(check_job=...)`).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from hydra.errors import CompactHydraException
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from agent_lightning.composition_errors import describe_safely
from agent_lightning.errors import user_facing

JobCheck = Callable[[DictConfig], Any]


class JobRefusedError(Exception):
    """A job's config cannot run: `line` says why; `composing` when Hydra could not even compose it."""

    def __init__(self, line: str, composing: bool) -> None:
        super().__init__(line)
        self.line = line
        self.composing = composing


# Hydra launchers that run a sweep's jobs on this machine. Elsewhere (SLURM) a job's devices and data paths
# are those of its node: it is checked there, when it starts, and here only composed.
_LAUNCHERS_HERE = ("BasicLauncher", "JoblibLauncher", "LocalLauncher")


@dataclass(frozen=True)
class JobChecker:
    """Checks a sweep's jobs before any starts: composed as Hydra will compose them, then `check`ed (if set)."""

    hydra_context: HydraContext
    sweep_config: DictConfig
    check: JobCheck | None = None

    @classmethod
    def for_sweep(
        cls, hydra_context: HydraContext, task_function: TaskFunction, sweep_config: DictConfig
    ) -> JobChecker:
        """With the command's own check (`hydra_command(check_job=...)`) where the jobs run on this machine."""
        target = str(OmegaConf.select(sweep_config, "hydra.launcher._target_", default=""))
        here = target.rsplit(".", 1)[-1] in _LAUNCHERS_HERE
        return cls(hydra_context, sweep_config, getattr(task_function, "check_job", None) if here else None)

    def composing_only(self) -> JobChecker:
        """The same sweep's jobs, only composed."""
        return JobChecker(self.hydra_context, self.sweep_config)

    def __call__(self, overrides: Sequence[str]) -> None:
        """Raise `JobRefusedError` if the job of `overrides` would be refused (a bug in the check: its traceback)."""
        try:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.sweep_config, list(overrides))
        except CompactHydraException as err:
            # None: composing the config here again, to name what would work, would reset the running Hydra.
            raise JobRefusedError(describe_safely(err, None, overrides), composing=True) from None
        if self.check is None:
            return
        with tempfile.TemporaryDirectory() as scratch, _quiet("agent_lightning"):
            # A job's directory is made (and checked) when it runs: checking here writes nothing.
            with read_write(cfg), open_dict(cfg):
                del cfg["hydra"]
                cfg.paths.output_dir = scratch
            try:
                self.check(cfg)
            except Exception as err:
                reported = user_facing(err)
                if reported is None:
                    raise
                raise JobRefusedError(reported[1], composing=False) from None


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    # What a check resolves (the strategy auto chose, ...) is logged by the job when it runs.
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)

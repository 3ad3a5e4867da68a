"""A study's trials write to `<hydra.sweep.dir>/<trial number>`: refuse a sweep directory whose numbers are taken.

Trial numbers count within one study, so a second study (another `study_name`) or a grid run earlier
into the same sweep directory would have its runs' config, log and summary files rewritten by the new
study's trials of the same numbers before the new-run guard refuses each of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from agent_lightning.errors import ConfigError

STUDY_KEY = "optuna_trial.study_name="  # the override each trial is launched with (`OptunaSearch._overrides`)


def launched_overrides(run_dir: Path) -> list[Any] | None:
    """The overrides a run in `run_dir` was launched with (`.hydra/overrides.yaml`); None where they are not there.

    None also for a file cut short: a job killed while Hydra was writing its files.
    """
    try:
        overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return overrides if isinstance(overrides, list) else None


def study_of(overrides: list[Any]) -> str | None:
    """The study a run launched with `overrides` was a trial of; None for a run of no study."""
    for override in overrides:
        if isinstance(override, str) and override.startswith(STUDY_KEY):
            return override.removeprefix(STUDY_KEY).strip("'\"")
    return None


def check_trial_dirs_free(sweep_dir: Path, subdir: Any, study_name: str) -> None:
    """ConfigError when `sweep_dir` holds numbered runs that are not this study's trials."""
    if subdir != "${hydra.job.num}" or not sweep_dir.is_dir():  # other names cannot be told before the trials run
        return
    for run_dir in sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        overrides = launched_overrides(run_dir)
        if overrides is None:  # not a run, or one killed as it started: it has nothing of its own to lose
            continue
        owner = study_of(overrides)
        if owner == study_name:
            continue
        held = f"the trials of study {owner!r}" if owner else "an earlier sweep's runs"
        resume = f", or continue that study with hydra.sweeper.study_name={owner}" if owner else ""
        raise ConfigError(
            f"hydra.sweep.dir={sweep_dir} holds {held} ({run_dir.name}/ and on): study {study_name!r} would write its "
            f"trials over them; choose another hydra.sweep.dir{resume}"
        )

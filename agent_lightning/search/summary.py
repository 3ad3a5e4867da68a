"""The end of a search: the best trial logged, and optimization_results.yaml, trials.csv and a history plot."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf
from optuna.study import StudyDirection
from optuna.trial import TrialState

log = logging.getLogger(__name__)
RUN_DIR_ATTR = "run_dir"  # a trial's job directory (its checkpoints, metrics and summary.json)


def write_summary(study: optuna.Study, sweep_dir: Path, metric: str = "value") -> None:
    """Log the best trial (its `metric`); write optimization_results.yaml, trials.csv and optimization_history.png."""
    completed = [t for t in study.trials if t.state == TrialState.COMPLETE]
    counts = {state.name.lower(): sum(t.state == state for t in study.trials) for state in TrialState}
    results: dict[str, Any] = {"name": study.study_name, "direction": study.direction.name.lower(), "trials": counts}
    if completed:
        best = study.best_trial
        run_dir = best.user_attrs.get(RUN_DIR_ATTR)
        results.update(best_value=best.value, best_params=best.params, best_trial=best.number, best_run_dir=run_dir)
        where = f" in {run_dir}" if run_dir else ""
        log.info("Best trial %d: %s = %.6g with %s%s", best.number, metric, best.value, best.params, where)
    else:
        log.warning("No trial of study %s completed", study.study_name)
    OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")

    names = sorted({name for t in study.trials for name in t.params})
    with open(sweep_dir / "trials.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["number", "state", "value", *names, "last_epoch_reported", "duration_s", "run_dir", "error"])
        for t in study.trials:
            duration = t.duration.total_seconds() if t.duration else ""
            last = max(t.intermediate_values) if t.intermediate_values else ""
            row = [t.number, t.state.name, t.value, *(t.params.get(n, "") for n in names), last, duration]
            writer.writerow([*row, t.user_attrs.get(RUN_DIR_ATTR, ""), t.user_attrs.get("error", "")])

    if completed:
        _plot_history(completed, study.direction, metric, sweep_dir / "optimization_history.png")
    log.info("Search summary in %s", sweep_dir)


def _plot_history(
    completed: list[optuna.trial.FrozenTrial], direction: StudyDirection, metric: str, path: Path
) -> None:
    """Each completed trial's value and the best so far, by trial number (no pyplot: a notebook keeps its backend)."""
    from agent_lightning.evaluation.plots import new_figure

    numbers, values = [t.number for t in completed], [float(t.value) for t in completed]
    pick = max if direction == StudyDirection.MAXIMIZE else min
    best = [pick(values[: i + 1]) for i in range(len(values))]
    figure = new_figure(6.4, 4.0)
    ax = figure.subplots()
    ax.scatter(numbers, values, s=16, label=metric)
    ax.step(numbers, best, where="post", color="tab:red", label="best so far")
    ax.set(xlabel="trial", ylabel=metric, title="Optimization history")
    ax.legend()
    figure.savefig(path, dpi=100, bbox_inches="tight")

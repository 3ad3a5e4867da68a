"""The end of a search: the best trial logged, and optimization_results.yaml, trials.csv and a history plot."""

from __future__ import annotations

import csv
import logging
import warnings
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf
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
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization.matplotlib import plot_optimization_history

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            ax = plot_optimization_history(study)
        ax.figure.savefig(sweep_dir / "optimization_history.png", dpi=100, bbox_inches="tight")
        plt.close(ax.figure)
    log.info("Search summary in %s", sweep_dir)

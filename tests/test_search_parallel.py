"""Parallel trials on one machine (Hydra's joblib launcher) and on Ray Tune."""

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from .conftest import run_cli

TINY = [
    "data.train_size=4096",
    "data.val_size=1024",
    "data.test_size=512",
    "test=false",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]
CLOCK = '+callbacks.clock={_target_: tests.helpers.WallClock, out_file: "${paths.output_dir}/clock.json"}'


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_optuna_trials_run_two_at_once_and_a_free_slot_is_filled_at_once(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    result = run_cli(
        "hparams_search=optuna",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *TINY,
        CLOCK,
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.pruner=null",
        '+hydra.sweeper.params.trainer.max_epochs="choice(1, 40)"',
        # A short trial beside a long one: the third must start when the short one ends, not after both.
        "hydra.sweeper.enqueue_trials=[{trainer.max_epochs: 1}, {trainer.max_epochs: 40}]",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    clocks = [json.loads((sweep / str(n) / "clock.json").read_text()) for n in range(3)]
    short, long, third = clocks
    assert third["start"] >= short["end"]  # the third trial took the short one's slot...
    assert third["start"] < long["end"] and long["start"] < third["end"]  # ...while the long one ran: two at once
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert {c["threads"] for c in clocks} == {max(1, cores // 2)}  # threads split between the two trials


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_tune_search_stops_hopeless_trials_early_and_reports_the_best(tmp_path: Path) -> None:
    pytest.importorskip("ray.tune")
    sweep = tmp_path / "sweep"
    fixed = "optimizer: adam, model.hidden_dim: 256, model.dropout: 0.0"
    # Two good learning rates first, then two hopeless ones: ASHA compares them at epoch 1 and stops them.
    points = ", ".join(f"{{{fixed}, optimizer.lr: {lr}}}" for lr in (0.005, 0.003, 0.0001, 0.0001))
    result = run_cli(
        "hparams_search=ray",
        *TINY,
        "trainer.max_epochs=3",
        "hydra.sweeper.num_samples=4",
        "hydra.sweeper.max_concurrent_trials=2",
        "hydra.sweeper.num_cpus=2",
        f"hydra.sweeper.points_to_evaluate=[{points}]",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        timeout=280,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    summary = OmegaConf.load(sweep / "tune_results.yaml")
    assert summary.trials == 4 and summary.errors == 0
    assert summary.stopped_early >= 1
    assert summary.best_params["optimizer.lr"] in (0.005, 0.003) and summary.best_value > 0.5
    assert "Best trial: val/acc_best = " in output
    trials = pd.read_csv(sweep / "trials.csv")
    assert len(trials) == 4 and trials["training_iteration"].max() == 3 and trials["training_iteration"].min() == 1
    # Each trial is a normal run: its own run directory with the CSV metrics of every epoch it trained.
    assert len(list((sweep / "tune").glob("*/run/csv/**/metrics.csv"))) == 4

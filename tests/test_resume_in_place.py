"""Resuming: on changed data a fresh epoch; in place (same run directory, metrics, best-k); `ckpt_path=latest`."""

from __future__ import annotations

import csv
import logging
import os
import shlex
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from agent_lightning.config import compose_config
from agent_lightning.data import ClusterTask
from agent_lightning.errors import ConfigError
from agent_lightning.prepare import prepare
from agent_lightning.runs.in_place import in_place_arguments, resolve_latest
from agent_lightning.runs.lock import HELD_ENV, run_directory_lock
from agent_lightning.runs.loop_progress import epochs_done, fit_loop_state, last_batch_ran, saved_within_epoch
from agent_lightning.runs.overrides import last_override, pasteable_override, quoted_value
from agent_lightning.train import train

from .conftest import run_cli
from .helpers import CrashAtStep, CrashError

QUICK = [
    "data=dataset",
    "data.batch_size=256",
    "data.block_rows=512",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
    "logger=none",
    "test=false",
    "callbacks.last_checkpoint.every_n_train_steps=5",
]


def _rows(rows: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x, y = ClusterTask(num_features=16, num_classes=4, cluster_std=0.7, seed=3).samples(start, start + rows)
    return x.numpy(), y.numpy()


class BatchLog(pl.Callback):
    """(epoch, batch index) of every training batch."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self.batches.append((trainer.current_epoch, idx))


class StepCount(pl.Callback):
    """The run's optimizer steps when training ends."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.global_step = trainer.global_step


@pytest.mark.parametrize("limit", ["trainer.max_epochs=2", "trainer.max_steps=25"], ids=["epochs", "steps"])
def test_a_resume_on_changed_data_runs_the_interrupted_epoch_afresh_and_whole(
    limit: str, tmp_path: Path, caplog
) -> None:
    prepare(_rows(2400), tmp_path / "day1", progress_bar=False)  # 1,920 train rows: 8 batches
    prepare(_rows(4800, 2400), tmp_path / "day2", progress_bar=False)  # 3,840 train rows: 15 batches
    run_dir = tmp_path / "run"
    with pytest.raises(CrashError):  # step 11 is the fourth batch of epoch 1; last.ckpt holds step 10
        train(compose_config([*QUICK, f"data.path={tmp_path / 'day1'}"], run_dir), extra_callbacks=[CrashAtStep(11)])
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 10

    seen = BatchLog()
    with caplog.at_level(logging.WARNING, logger="agent_lightning"):
        resume = [*QUICK, f"data.path={tmp_path / 'day2'}", f"ckpt_path={last}", limit]
        cfg = compose_config([*resume, *(["trainer.max_epochs=-1"] if "steps" in limit else [])], tmp_path / "resumed")
        train(cfg, extra_callbacks=[seen])
    assert seen.batches == [(1, i) for i in range(15)]  # epoch 1 again, all 15 batches of the new data
    assert "resuming with other data than the checkpoint's" in caplog.text
    assert "epoch 1 starts again from its first batch (it had run about 2 batches)" in caplog.text
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 25 and resumed["epoch"] == 1


def test_a_resume_with_another_batch_size_runs_the_interrupted_epoch_afresh(tmp_path: Path, caplog) -> None:
    prepare(_rows(2400), tmp_path / "day1", progress_bar=False)  # 1,920 train rows
    run_dir = tmp_path / "run"
    with pytest.raises(CrashError):  # 2 batches of 256 into epoch 1
        train(compose_config([*QUICK, f"data.path={tmp_path / 'day1'}"], run_dir), extra_callbacks=[CrashAtStep(11)])
    seen = BatchLog()
    with caplog.at_level(logging.WARNING, logger="agent_lightning"):
        resume = [
            *QUICK,
            f"data.path={tmp_path / 'day1'}",
            "data.batch_size=128",
            f"ckpt_path={run_dir}/checkpoints/last.ckpt",
        ]
        train(compose_config(resume, tmp_path / "resumed"), extra_callbacks=[seen])
    # Its position counted batches of 256: the same rows, batched by 128, run epoch 1 whole again.
    assert seen.batches == [(1, i) for i in range(15)]
    assert (
        "resuming with data.batch_size=128 (the checkpoint's position counts batches of 256 over 1 ranks)"
        in caplog.text
    )

    # From a checkpoint written at an epoch's end, the next epoch simply starts: nothing finished is trained again.
    more = BatchLog()
    resumed_last = f"ckpt_path={tmp_path}/resumed/checkpoints/last.ckpt"
    again = [*QUICK, f"data.path={tmp_path / 'day1'}", "data.batch_size=64", "trainer.max_epochs=3", resumed_last]
    train(compose_config(again, tmp_path / "resumed"), extra_callbacks=[more])
    assert more.batches == [(2, i) for i in range(30)]


def test_a_resume_after_max_steps_ended_an_epoch_early_trains_the_rest_of_it(tmp_path: Path, caplog) -> None:
    synthetic = ["data.train_size=2048", "data.batch_size=256", "trainer.steps_per_execution=1", "test=false"]
    quiet = ["trainer.enable_progress_bar=false", "trainer.num_sanity_val_steps=0", "logger=none"]
    train(compose_config([*synthetic, *quiet, "trainer.max_steps=5"], tmp_path / "run"))  # 5 of epoch 0's 8
    resume = [*synthetic, *quiet, "trainer.max_epochs=2", f"ckpt_path={tmp_path}/run/checkpoints/last.ckpt"]
    seen = BatchLog()
    with caplog.at_level(logging.INFO, logger="agent_lightning"):
        train(compose_config(resume, tmp_path / "resumed"), extra_callbacks=[seen, steps := StepCount()])
    assert seen.batches == [(0, 5), (0, 6), (0, 7), *((1, i) for i in range(8))]  # epoch 0's rest, then epoch 1
    assert steps.global_step == 16
    assert "resuming inside epoch 0, which trainer.max_steps had ended after 5 batches" in caplog.text


TINY = [
    "name=ip",
    "data.train_size=2048",
    "data.val_size=512",
    "data.test_size=512",
    "data.batch_size=256",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
    "print_config=false",
    "test=false",
]


def _fit_loop(started: int, processed: int, last_batch: bool) -> dict[str, Any]:
    return {
        "epoch_progress": {"current": {"started": started, "processed": processed}},
        "epoch_loop.batch_progress": {"is_last_batch": last_batch},
    }


@pytest.mark.parametrize(
    ("fit_loop", "within", "finished", "done"),
    [
        (_fit_loop(2, 2, False), False, False, 2),  # between epochs
        (_fit_loop(2, 1, True), True, True, 2),  # at the second epoch's validation: last.ckpt of a finished run
        (_fit_loop(2, 1, False), True, False, 1),  # part-way through the second epoch
        ({}, False, False, None),  # no progress recorded
    ],
)
def test_loop_progress_tells_a_finished_epoch_from_an_interrupted_one(fit_loop, within, finished, done) -> None:
    assert saved_within_epoch(fit_loop) is within and last_batch_ran(fit_loop) is finished
    assert epochs_done(fit_loop) == done == epochs_done(fit_loop_state({"loops": {"fit_loop": fit_loop}}))


def _metrics(run: Path) -> list[dict[str, str]]:
    with (run / "csv" / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


@pytest.mark.timeout(180)
def test_a_resume_in_place_continues_the_run_directory_its_metrics_and_best_checkpoint(
    tmp_path: Path, monkeypatch
) -> None:
    # The first run as Hydra lays it out: outputs/<name>/<time>/ with its composed config in .hydra/.
    run = tmp_path / "outputs" / "ip" / "2026-01-01_00-00-00"
    cfg = compose_config([*TINY, "trainer.max_epochs=1"], output_dir=run)
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    train(cfg)
    last = run / "checkpoints" / "last.ckpt"

    with run_directory_lock(run):  # another run is writing there: refused before Hydra writes anything
        monkeypatch.delenv(HELD_ENV)  # as for a process that does not hold it
        with pytest.raises(ConfigError, match="is in use by another run"):
            in_place_arguments(["train", f"ckpt_path={last}"])

    resumed = run_cli(*TINY, "ckpt_path=latest", "trainer.max_epochs=2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [p.name for p in (tmp_path / "outputs" / "ip").iterdir()] == [run.name]  # no second run directory
    assert OmegaConf.load(run / ".hydra" / "config.yaml").ckpt_path is None  # the first run's config, untouched
    saved = OmegaConf.load(run / ".hydra" / "resume-1" / "config.yaml")  # the resumed run's, beside it
    assert (tmp_path / saved.ckpt_path).resolve() == last.resolve() and saved.trainer.max_epochs == 2

    # A resume its checkpoint refuses (another model) is one line, and leaves no record of a run that never ran.
    written = last.read_bytes()
    refused = run_cli(*TINY, "ckpt_path=latest", "trainer.max_epochs=3", "model.hidden_dim=16", cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "model.hidden_dim" in refused.stdout and "Composed config" not in refused.stdout, refused.stdout
    assert sorted(p.name for p in (run / ".hydra").glob("resume-*")) == ["resume-1"]
    assert last.read_bytes() == written

    rows = _metrics(run)
    validated = [(int(r["epoch"]), float(r["val/acc"])) for r in rows if r.get("val/acc")]
    assert [epoch for epoch, _ in validated] == [0, 1]  # both parts of the run in one metrics.csv
    # Each epoch's end logged once: the first run's last.ckpt was written after its epoch's end.
    assert [int(r["epoch"]) for r in rows if r.get("train/acc")] == [0, 1]
    assert [int(r["step"]) for r in rows if r.get("train/loss")] == sorted(
        int(r["step"]) for r in rows if r.get("train/loss")
    )
    # Best-k tracking continued: one best checkpoint in the directory, the best of both epochs.
    (best,) = (run / "checkpoints").glob("best-*.ckpt")
    state = torch.load(last, map_location="cpu", weights_only=True)
    tracked = next(v for k, v in state["callbacks"].items() if k.startswith("ModelCheckpoint{'monitor': 'val/acc'"))
    assert Path(tracked["best_model_path"]) == best.resolve()
    assert float(tracked["best_model_score"]) == pytest.approx(max(acc for _, acc in validated), abs=1e-6)


def test_latest_is_the_most_recently_written_last_checkpoint_and_names_a_newer_sweep_job(
    compose_cfg, tmp_path: Path, caplog
) -> None:
    runs = [("outputs/ip/2026-01-02_00-00-00", 100), ("outputs/ip/2026-01-01_00-00-00", 10)]
    runs += [("outputs/ip/2026-01-03_00-00-00", None), ("multirun/ip/2026-01-04_00-00-00/1", 1)]
    runs += [("multirun/other/2026-01-04_00-00-00/0", 1)]
    for run, age in runs:
        checkpoints = tmp_path / run / "checkpoints"
        checkpoints.mkdir(parents=True)
        if age is not None:  # the third run never wrote a checkpoint
            (checkpoints / "last.ckpt").write_bytes(b"")
            os.utime(checkpoints / "last.ckpt", (time.time() - age, time.time() - age))
    roots = [f"paths.output_root={tmp_path / 'outputs'}", f"paths.multirun_root={tmp_path / 'multirun'}"]
    cfg = compose_cfg("name=ip", *roots, "ckpt_path=latest")
    with caplog.at_level(logging.WARNING, logger="agent_lightning"):
        resolve_latest(cfg)
    # A sweep's job is not a candidate (its config is the sweep's), but the newer one is named.
    assert cfg.ckpt_path == str(tmp_path / "outputs" / "ip" / "2026-01-01_00-00-00" / "checkpoints" / "last.ckpt")
    assert "the newer " + str(tmp_path / "multirun/ip/2026-01-04_00-00-00/1/checkpoints/last.ckpt") in caplog.text
    with pytest.raises(ConfigError, match=r"no run under .*/other/ has a .*: give ckpt_path=.*multirun/other/.*/0/"):
        resolve_latest(compose_cfg("name=other", *roots, "ckpt_path=latest"))


def test_a_resume_by_path_keeps_the_runs_name_tags_and_directory(tmp_path: Path) -> None:
    run = tmp_path / "outputs" / "probe" / "2026-01-01_00-00-00"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / ".hydra" / "config.yaml").write_text("name: probe\ntags: [nightly, adam]\n")
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(b"")

    # By path alone: the run's directory, a resume-<n> record beside its config, and its name and tags.
    args = in_place_arguments(["train", f"ckpt_path={last}"])
    assert f"hydra.run.dir='{run}'" in args and "hydra.output_subdir=.hydra/resume-1" in args
    assert "name=probe" in args and "tags=[nightly,adam]" in args
    # What the command line gives wins.
    assert "name=probe" not in in_place_arguments(["train", f"ckpt_path={last}", "name=other"])
    # hydra.run.dir= naming the run itself is still a resume in place: its first config is not overwritten.
    same = in_place_arguments(["train", f"hydra.run.dir={run}", f"ckpt_path={last}"])
    assert "hydra.output_subdir=.hydra/resume-1" in same and not any(a.startswith("hydra.run.dir='") for a in same)
    # Another directory: a new run there, from this checkpoint.
    elsewhere = ["train", f"hydra.run.dir={tmp_path / 'new'}", f"ckpt_path={last}"]
    assert in_place_arguments(elsewhere) == elsewhere


def test_a_resume_argument_pasted_into_a_shell_gives_hydra_and_our_own_checks_the_path(tmp_path: Path) -> None:
    parser = OverridesParser.create()
    plain = "/runs/2026-11-29_19:30:00@node%1/agent-v1.2+b/last.ckpt"
    assert pasteable_override("ckpt_path", plain) == f"ckpt_path={plain}"  # what most paths are: left as they are
    odd = (
        "/my runs/x",
        "/runs/it's/$HOME/a,b=c/[1]/x",
        "/r/back\\slash\\/x\\",
        "/r/\\'/x",
        "/é/x",
        "/r/${x}/y",
        "/r/a\\${x}",
    )
    for path in (plain, *odd):
        [word] = shlex.split(pasteable_override("ckpt_path", path))  # one argument, as the shell passes it
        override = parser.parse_override(word)
        as_composed = OmegaConf.create({"value": override.value()}).value  # `\${` is read as a literal `${`
        assert (override.key_or_group, as_composed) == ("ckpt_path", path)
        assert last_override([word], "ckpt_path") == path  # what the checks before Hydra read
    # A stopped run's line, pasted, resumes in place: the run's directory is recognised from the quoted path.
    run = tmp_path / "it's a run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    [word] = shlex.split(pasteable_override("ckpt_path", run / "checkpoints" / "last.ckpt"))
    placed = in_place_arguments(["train", word])
    assert f"hydra.run.dir={quoted_value(run)}" in placed and "hydra.output_subdir=.hydra/resume-1" in placed

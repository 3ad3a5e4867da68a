"""What a run prints: whole progress lines when the output is not a terminal, and the config tree."""

import json
import logging
from pathlib import Path

import pytest
import torch

from agent_lightning.runs.report import config_tree
from agent_lightning.train import train

from .conftest import run_cli
from .helpers import StepLosses


def test_default_run_writes_few_whole_lines_to_a_pipe(tmp_path: Path) -> None:
    # The default run (5 epochs) on a tenth of its data: lines come per epoch, not per batch, so the
    # count does not depend on the data size.
    result = run_cli(
        "name=console_probe",
        "data.train_size=10240",
        "data.val_size=2048",
        "data.test_size=2048",
        f"paths.output_root={tmp_path / 'outputs'}",
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    lines = output.splitlines()
    assert len(lines) < 200, f"{len(lines)} lines"
    assert "\r" not in output  # no bar redraws
    # The config tree once at the start, then one progress line per epoch and one per validation.
    assert output.count("├─ model (mlp): ") == 1 and "└─ " in output
    assert sum("epoch 4/5 100% (20/20 batches" in line for line in lines) == 1
    assert sum(" validated " in line and "val/acc=" in line for line in lines) == 5
    (run_dir,) = (tmp_path / "outputs" / "console_probe").iterdir()  # outputs/<name>/<time>/
    assert json.loads((run_dir / "summary.json").read_text())["metrics"]["test/acc"] > 0.5  # chance: 0.1
    assert "epoch 4 validated" in (run_dir / "train.log").read_text()  # the lines are in the job's log too


def test_line_progress_prints_every_percent_in_a_long_epoch(compose_cfg, caplog) -> None:
    # min_seconds=0 stands for an epoch long enough to earn its percent lines: 128 batches in groups of 32
    # (the bar counts batches; it moves once per group), a line per 25%.
    cfg = compose_cfg(
        "progress=lines",
        "progress.every_percent=25",
        "progress.min_seconds=0",
        "trainer.enable_progress_bar=true",
        "data.train_size=32768",
        "test=false",
    )
    with caplog.at_level(logging.INFO, logger="agent_lightning"):
        train(cfg)
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    for epoch in (0, 1):
        done = [m.split("(")[1].split(" batches")[0] for m in progress if m.startswith(f"epoch {epoch}/2 ")]
        assert done == ["32/128", "64/128", "96/128", "128/128"], progress
    assert sum(" validated " in m for m in progress) == 2


def test_config_tree_has_one_branch_per_group_with_its_choice(compose_cfg) -> None:
    cfg = compose_cfg("optimizer=sgd")
    tree = config_tree(cfg, {"optimizer": "sgd", "model": "mlp"}, width=100)
    lines = tree.splitlines()
    # The top-level keys on the root line, as the keys they are (seed=..., not under a branch).
    assert lines[0].startswith("config: seed=42 name=train") and all(len(line) <= 100 for line in lines)
    assert any(line.startswith("├─ optimizer (sgd): ") and "lr=" in line for line in lines)
    assert "_target_" not in tree and "momentum=" in tree
    assert sum(line.startswith(("├─", "└─")) for line in lines) == sum(
        1 for v in cfg.values() if hasattr(v, "keys") and len(v)
    )


def test_line_progress_with_max_steps_and_no_epoch_limit_prints_each_epoch_once(compose_cfg, caplog, tmp_path) -> None:
    # Lightning's epoch length with max_epochs=-1 is the steps left to max_steps, which shrinks every step.
    cfg = compose_cfg(
        "progress=lines",
        "trainer.enable_progress_bar=true",
        "data.train_size=2048",  # 8 batches an epoch (of 256)
        "trainer.max_epochs=-1",
        "trainer.max_steps=20",
        "test=false",
    )
    losses = tmp_path / "losses.pt"
    with caplog.at_level(logging.INFO, logger="agent_lightning"):
        train(cfg, extra_callbacks=[StepLosses(str(losses))])
    progress = [r.getMessage() for r in caplog.records if "% (" in r.getMessage()]
    done = [m.split("(")[1].split(" batches")[0] for m in progress]
    assert done == ["8/8", "8/8", "4/4"], progress  # 20 steps: two whole epochs and 4 of the third
    # Each line shows its own last batch's loss, although no step of these short epochs is a logged one (50).
    shown = [float(m.split("train/loss=")[1].split()[0]) for m in progress]
    steps = torch.load(losses)
    assert shown == pytest.approx([steps[7], steps[15], steps[19]], rel=1e-3), (shown, steps)

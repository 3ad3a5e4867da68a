"""Runs you can trust with two ranks: a stop saves a current last.ckpt, a rank's own error is printed once."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
import torch

from agent_lightning.export import load_agent
from agent_lightning.safe_load import LIGHTNING_META

from .conftest import FAST, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
# 16 steps per epoch (global batch 256 over 2 ranks).
SMALL = [*FAST, "data.train_size=4096", "data.val_size=512", "data.test_size=512", "test=false", "devices=2"]


def _output(result) -> str:
    return result.stdout + result.stderr


def test_sigterm_to_a_two_rank_run_saves_a_current_last_ckpt_that_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [*SMALL, "strategy=ddp", "trainer.max_steps=24", f"hydra.run.dir={run_dir}"]
    stop = [
        "+callbacks.stop._target_=tests.helpers.SignalAtStep",
        "+callbacks.stop.step=6",
        f"+callbacks.stop.signum={int(signal.SIGTERM)}",
        "+callbacks.stop.to_parent=true",  # the launcher: it passes the signal on to both ranks
        "+callbacks.stop.rank=1",
    ]
    stopped = run_cli(*args, *stop, cwd=tmp_path)
    last = run_dir / "checkpoints" / "last.ckpt"
    found = re.findall(r"stopped by SIGTERM at step (\d+); saved (\S+): to resume", _output(stopped))
    assert stopped.returncode == 143 and len(found) == 1, _output(stopped)[-2000:]
    assert "Traceback" not in _output(stopped)
    step = int(found[0][0])
    assert 6 <= step < 24 and found[0][1] == str(last)
    assert torch.load(last, weights_only=True)["global_step"] == step

    resumed = run_cli(*args, f"ckpt_path={last}", cwd=tmp_path)
    assert resumed.returncode == 0, _output(resumed)[-2000:]
    assert torch.load(last, weights_only=True)["global_step"] == 24  # current at the end of training


def test_a_sharded_last_ckpt_holds_the_final_step_and_is_replaced_whole(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # Ends 5 steps into epoch 2: no validation or epoch end after the last step.
    result = run_cli(*SMALL, "strategy=fsdp", "trainer.max_steps=21", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, _output(result)[-2000:]
    checkpoints = run_dir / "checkpoints"
    last = checkpoints / "last.ckpt"
    assert torch.load(last / LIGHTNING_META, weights_only=True)["global_step"] == 21
    assert not [p for p in checkpoints.iterdir() if p.name.endswith((".tmp", ".old"))]  # written aside, renamed in
    assert load_agent(last)(torch.randn(2, 128)).shape == (2, 10)


def test_a_rank_side_error_is_printed_once_by_the_launcher(tmp_path: Path) -> None:
    fail = ["+callbacks.fail._target_=tests.helpers.FailOnRank", "+callbacks.fail.rank=1"]
    result = run_cli(*SMALL, "strategy=ddp", *fail, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    output = _output(result)
    assert result.returncode == 3, output[-2000:]  # a crashed rank, not a config error (2)
    cause = "training failed on rank 1: KeyError: 'boom on purpose' (at helpers.py:"
    assert output.count(cause) == 1 and "Traceback" not in output, output[-2000:]
    kept = tmp_path / "run" / "crash-rank1.log"  # the whole traceback, named at the end of the line
    assert f"traceback in {kept}" in output and "KeyError: 'boom on purpose'" in kept.read_text()

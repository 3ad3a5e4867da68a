"""Shared fixtures: compose the real config tree once per call, small enough to train in seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from agent_lightning.config import compose_config

# A small task that still needs learning: 64 steps per epoch, 2 epochs.
FAST = [
    "data.train_size=16384",
    "data.val_size=2048",
    "data.test_size=2048",
    "data.batch_size=256",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
]

ComposeFn = Callable[..., DictConfig]


@pytest.fixture(autouse=True)
def _work_in_a_scratch_directory(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run each test in a directory of its own: relative defaults (outputs/, multirun/) stay out of the checkout."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture
def compose_cfg(tmp_path: Path) -> ComposeFn:
    """Compose `conf/config.yaml` with overrides, writing under a fresh temporary run directory."""

    def _compose(*overrides: str, fast: bool = True, output_dir: Path | None = None) -> DictConfig:
        return compose_config([*(FAST if fast else []), *overrides], output_dir=output_dir or tmp_path / "run")

    return _compose


def run_cli(*args: str, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    """Run `python -m agent_lightning.train ARGS` as a user would.

    The command runs in its own process group, so on a timeout its ranks are killed with it
    and a hung rank fails the test instead of outliving it.
    """
    command = [sys.executable, "-m", "agent_lightning.train", *args]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    with subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)

"""One small trained run shared by the policy and export tests (trained once per test session)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from agent_lightning.config import compose_config
from agent_lightning.data import ClusterTask
from agent_lightning.prepare import prepare
from agent_lightning.train import train

OBS_DIM, N_ACTIONS = 8, 4
QUICK = [
    "data=dataset",
    "data.batch_size=128",
    "model.hidden_dim=32",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
    "logger=none",
]


def scaled_task(rows: int, seed: int = 3, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Observations far from unit scale (mean 3, std 5), so the saved normalisation changes the actions.

    `seed` chooses the task; `start` its rows (other rows of the same task: held-out data).
    """
    task = ClusterTask(num_features=OBS_DIM, num_classes=N_ACTIONS, cluster_std=0.8, seed=seed)
    x, y = task.samples(start, start + rows)
    return (x.numpy() * 5.0 + 3.0).astype(np.float32), y.numpy()


_RUN: dict[str, Path] = {}


def trained_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A prepared dataset and a 1-epoch run on it: {'data', 'ckpt'} (the run's last.ckpt), made once per session."""
    if not _RUN:
        root = tmp_path_factory.mktemp("policy_run")
        prepare(scaled_task(2_000), root / "data", progress_bar=False)
        cfg = compose_config([*QUICK, f"data.path={root / 'data'}"], output_dir=root / "run")
        train(cfg)
        _RUN.update(data=root / "data", ckpt=root / "run" / "checkpoints" / "last.ckpt")
    return dict(_RUN)


class Payload:
    """Unpickling this runs a command: what an attacker's checkpoint would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def malicious_file(path: Path, marker: Path) -> Path:
    """A torch file whose loading with weights_only=False would create `marker`."""
    torch.save({"state_dict": Payload(marker), "model_config": {}, "loops": {}}, path)
    return path

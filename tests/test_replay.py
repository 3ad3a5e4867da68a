"""Replay against forgetting: old rows mixed into every batch, per rank and resumably; task A kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from agent_lightning.config import compose_config
from agent_lightning.data import ClusterTask, PreparedDataModule, PreparedDataset
from agent_lightning.data.replay import check_replay_matches
from agent_lightning.errors import ConfigError
from agent_lightning.export import load_agent
from agent_lightning.prepare import prepare
from agent_lightning.train import train

QUICK = [
    "data=dataset",
    "data.batch_size=64",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
    "logger=none",
    "test=false",
    "seed=0",
]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> tuple[Path, Path]:
    """Task A (classes 0, 1) and task B (classes 2, 3) of one cluster task, both with 4 classes."""
    root = tmp_path_factory.mktemp("tasks")
    x, y = ClusterTask(num_features=16, num_classes=4, cluster_std=1.0, seed=1).samples(0, 4_000)
    x, y = x.numpy(), y.numpy()
    in_a = y < 2
    prepare((x[in_a], y[in_a]), root / "a", num_classes=4, progress_bar=False)
    prepare((x[~in_a], y[~in_a]), root / "b", num_classes=4, progress_bar=False)
    return root / "a", root / "b"


def _module(tasks: tuple[Path, Path], fraction: float, rank: int = 0, world: int = 1) -> PreparedDataModule:
    task_a, task_b = tasks
    data = PreparedDataModule(str(task_b), batch_size=64, block_rows=256, replay={"path": task_a, "fraction": fraction})
    data._rank, data._world = rank, world
    return data


def test_replay_fraction_of_every_batch_is_old_rows(tasks):
    batches = list(_module(tasks, 0.3).train_dataloader())
    assert len(batches) > 10
    for _, labels in batches:
        assert int((labels < 2).sum()) == 19  # round(0.3 x 64) rows of task A
    assert all(len(labels) == 64 for _, labels in batches[:-1])  # the batch keeps its size (the epoch's last: less new)
    old = torch.cat([x[-19:] for x, _ in batches])
    assert len(torch.unique(old, dim=0)) == len(old)  # a pass over A's rows, not the same rows again


def test_replay_ranks_are_disjoint_and_deterministic(tasks):
    first = [list(_module(tasks, 0.3, rank, 2).train_dataloader())[:5] for rank in (0, 1)]
    again = list(_module(tasks, 0.3, 0, 2).train_dataloader())[:5]
    for (x0, y0), (x1, _), (x_again, _) in zip(first[0], first[1], again, strict=True):
        assert len(y0) == 32 and int((y0 < 2).sum()) == round(0.3 * 32)
        rows0, rows1 = {r.tobytes() for r in x0.numpy()}, {r.tobytes() for r in x1.numpy()}
        assert not rows0 & rows1
        assert torch.equal(x0, x_again)


def test_replay_resumes_both_positions(tasks):
    data = _module(tasks, 0.3)
    loader = data.train_dataloader()
    batches = iter(loader)
    for _ in range(7):
        next(batches)
    state = data.state_dict()
    expected = next(batches)
    resumed = _module(tasks, 0.3)
    resumed.load_state_dict(state)
    got = next(iter(resumed.train_dataloader()))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def _accuracy(checkpoint: Path, dataset: Path) -> float:
    model = load_agent(checkpoint)
    split = PreparedDataset(dataset).splits["val"]
    x, y = split.rows_of(0, split.rows)
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1) == torch.from_numpy(y)).float().mean())


def test_replay_keeps_task_a_accuracy(tasks, tmp_path):
    task_a, task_b = tasks
    train(compose_config([*QUICK, f"data.path={task_a}", "trainer.max_epochs=1"], tmp_path / "a"))
    after_a = tmp_path / "a" / "checkpoints" / "last.ckpt"
    assert _accuracy(after_a, task_a) > 0.8
    kept = {}
    for fraction in (0.0, 0.3):
        out = tmp_path / f"b{fraction}"
        # max_epochs is the run's total: A's finished epoch, then 3 on B.
        overrides = [f"data.path={task_b}", f"ckpt_path={after_a}", "trainer.max_epochs=4"]
        overrides += [f"data.replay.path={task_a}", f"data.replay.fraction={fraction}"]
        train(compose_config([*QUICK, *overrides], out))
        assert _accuracy(out / "checkpoints" / "last.ckpt", task_b) > 0.8
        kept[fraction] = _accuracy(out / "checkpoints" / "last.ckpt", task_a)
    assert kept[0.0] < 0.3  # without replay, task A is forgotten
    assert kept[0.3] > max(0.6, kept[0.0] + 0.4)


def test_replay_of_another_width_is_refused(tasks, tmp_path):
    x = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    prepare((x, np.arange(200) % 4), tmp_path / "narrow", progress_bar=False)
    overrides = [f"data.path={tasks[1]}", f"data.replay.path={tmp_path / 'narrow'}", "data.replay.fraction=0.2"]
    with pytest.raises(ConfigError, match=r"data.replay.path=.*narrow has 8 features but data.path=.* has 16"):
        compose_config([*QUICK, *overrides], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"data.replay.fraction=1.5 must be a number >= 0 and < 1"):
        compose_config([*QUICK, f"data.path={tasks[1]}", f"data.replay.path={tasks[0]}", "data.replay.fraction=1.5"])
    with pytest.raises(ConfigError, match=r"data.replay.fraction=0.2 needs data.replay.path"):
        compose_config([*QUICK, f"data.path={tasks[1]}", "data.replay.fraction=0.2"])
    replay = [f"data.path={tasks[1]}", f"data.replay.path={tasks[0]}", "data.replay.fraction=0.2"]
    one_row = r"data.batch_size=1 leaves 1 row per batch: give each rank's batch at least 2 rows"
    with pytest.raises(ConfigError, match=one_row):  # no room for an old row and a new one
        compose_config([*QUICK, *replay, "data.batch_size=1"])
    from agent_lightning.validation import validate

    with pytest.raises(ConfigError, match=r"data.batch_size=2 over 2 data-parallel ranks leaves 1 row per batch"):
        validate(compose_config([*QUICK, *replay, "data.batch_size=2", "strategy=ddp", "devices=2"]))  # before ranks
    two_ranks = _module(tasks, 0.2, 0, 2)
    two_ranks.batch_size = 2  # data.batch_size=2 passes the check above; each of 2 ranks gets one row
    with pytest.raises(ConfigError, match=r"data.batch_size=2 over 2 data-parallel ranks leaves 1 row per batch"):
        two_ranks.train_dataloader()
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match=r"^data.replay.path=.*nope is not a prepared dataset"):
        compose_config([*QUICK, f"data.path={tasks[1]}", f"data.replay.path={missing}", "data.replay.fraction=0.2"])


def test_replay_and_stream_parts_with_other_columns_are_refused(tmp_path):
    import pandas as pd

    x = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
    frame = pd.DataFrame(x, columns=["a", "b", "c"]).assign(label=np.arange(200) % 2)
    frame.to_csv(tmp_path / "abc.csv", index=False)
    frame.rename(columns={"c": "d"}).to_csv(tmp_path / "abd.csv", index=False)
    prepare(tmp_path / "abc.csv", tmp_path / "abc", progress_bar=False)
    prepare(tmp_path / "abd.csv", tmp_path / "abd", progress_bar=False)
    with pytest.raises(
        ConfigError, match=r"has the feature columns \['a', 'b', 'c'\] but data.path=.* has \['a', 'b', 'd'\]"
    ):
        check_replay_matches(tmp_path / "abd", tmp_path / "abc")
    prepare(tmp_path / "abc.csv", tmp_path / "live", append=True, progress_bar=False)
    with pytest.raises(ConfigError, match=r"the new part has the feature columns \['a', 'b', 'd'\] but the stream"):
        prepare(tmp_path / "abd.csv", tmp_path / "live", append=True, progress_bar=False)

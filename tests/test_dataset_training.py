"""Training on prepared datasets: input order does not matter, statistics travel with the model, resume, splits."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch

from agent_lightning.config import compose_config
from agent_lightning.data import ClusterTask
from agent_lightning.data.adapting import apply_data_statistics
from agent_lightning.errors import ConfigError
from agent_lightning.export import export, load_agent
from agent_lightning.model import AgentMLP
from agent_lightning.prepare import prepare
from agent_lightning.train import run, train

from .conftest import run_cli
from .helpers import CrashAtStep, CrashError

QUICK = [
    "data=dataset",
    "data.batch_size=256",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
    "logger=none",
]


def _scaled_task(rows: int, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """A learnable task whose features are far from unit scale (mean 3, std 5), as raw data often is."""
    x, y = ClusterTask(num_features=32, num_classes=6, cluster_std=0.7, seed=seed).samples(0, rows)
    return (x.numpy() * 5.0 + 3.0).astype(np.float32), y.numpy()


@pytest.fixture(scope="module")
def task() -> tuple[np.ndarray, np.ndarray]:
    return _scaled_task(6_000)


@pytest.fixture(scope="module")
def sorted_and_shuffled(task, tmp_path_factory) -> dict[str, dict]:
    """The same rows prepared from a class-sorted and from a shuffled input, each trained once."""
    root = tmp_path_factory.mktemp("order")
    x, y = task
    results = {}
    for name, order in (
        ("sorted", np.argsort(y, kind="stable")),
        ("shuffled", np.random.default_rng(0).permutation(len(y))),
    ):
        manifest = prepare((x[order], y[order]), root / name, progress_bar=False)
        cfg = compose_config([*QUICK, f"data.path={root / name}"], output_dir=root / f"run-{name}")
        results[name] = {"manifest": manifest, "metrics": train(cfg)}
    return results


def test_a_class_sorted_input_trains_like_a_shuffled_one(sorted_and_shuffled) -> None:
    accuracy = {name: run["metrics"]["test/acc"] for name, run in sorted_and_shuffled.items()}
    assert accuracy["sorted"] > 0.9
    assert abs(accuracy["sorted"] - accuracy["shuffled"]) <= 0.01


def test_statistics_travel_in_the_checkpoint_and_export(sorted_and_shuffled, task, tmp_path: Path) -> None:
    manifest, metrics = sorted_and_shuffled["sorted"]["manifest"], sorted_and_shuffled["sorted"]["metrics"]
    mean, std = (torch.tensor(manifest["statistics"][k]) for k in ("mean", "std"))
    assert float(mean.mean()) == pytest.approx(3.0, abs=0.3) and float(std.mean()) == pytest.approx(5.0, abs=0.5)
    checkpoint = Path(metrics["best_model_path"])
    exported = export(checkpoint, tmp_path / "agent.pt")
    raw = torch.from_numpy(task[0][:512])
    for path in (checkpoint, exported):
        agent = load_agent(path)
        assert torch.allclose(agent.normalizer.mean, mean) and torch.allclose(agent.normalizer.std, std)
        logits = agent(raw)
        assert (logits.argmax(1) == torch.from_numpy(task[1][:512])).float().mean() > 0.9  # raw observations in
        agent.normalizer.set_statistics(torch.zeros(32), torch.ones(32))
        assert torch.allclose(agent((raw - mean) / std), logits, atol=1e-5)  # the model standardised them itself
    # A checkpoint from before normalisation existed (no mean/std) still loads, as the identity.
    old = {k: v for k, v in load_agent(exported).state_dict().items() if not k.startswith("normalizer.")}
    legacy = AgentMLP(input_dim=32, output_dim=6)
    legacy.load_state_dict(old)
    assert torch.equal(legacy.normalizer(raw), raw) and not legacy.normalizer.active


def test_normalize_none_leaves_the_model_identity(sorted_and_shuffled, tmp_path: Path) -> None:
    path = sorted_and_shuffled["sorted"]["metrics"]["run_dir"]
    cfg = compose_config([*QUICK, f"data.path={Path(path).parent / 'sorted'}", "data.normalize=none"])
    datamodule, model = hydra.utils.instantiate(cfg.data), hydra.utils.instantiate(cfg.model)
    assert datamodule.statistics() is None
    apply_data_statistics(model, datamodule)
    assert torch.equal(model.normalizer.mean, torch.zeros(32)) and not model.normalizer.active


def test_resume_mid_epoch_matches_an_uninterrupted_run(compose_cfg, task, tmp_path: Path) -> None:
    prepare((task[0][:2400], task[1][:2400]), tmp_path / "ds", progress_bar=False)
    common = [*QUICK, f"data.path={tmp_path / 'ds'}", "data.block_rows=512", "trainer.deterministic=true",
              "callbacks.last_checkpoint.every_n_train_steps=5", "test=false"]  # fmt: skip
    whole = train(compose_cfg(*common, fast=False, output_dir=tmp_path / "whole"))
    # 8 batches per epoch (1,920 rows, the last one short): step 11 is mid-way through the second.
    with pytest.raises(CrashError):
        train(compose_cfg(*common, fast=False, output_dir=tmp_path / "cut"), extra_callbacks=[CrashAtStep(11)])
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    position = saved["PreparedDataModule"]["train_position"]
    assert saved["global_step"] == 10 and position["epoch"] == 1 and position["batches_served"] == 2
    resumed = train(compose_cfg(*common, f"ckpt_path={last}", fast=False, output_dir=tmp_path / "cut"))
    assert resumed["val/acc"] == pytest.approx(whole["val/acc"], abs=1e-6)
    final = [
        torch.load(p / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        for p in (tmp_path / "whole", tmp_path / "cut")
    ]
    assert all(torch.allclose(final[0][k], final[1][k], atol=1e-6) for k in final[0])


def test_without_val_and_test_splits_the_run_checkpoints_by_step_and_skips_testing(
    compose_cfg, task, tmp_path: Path, caplog
) -> None:
    prepare((task[0][:3000], task[1][:3000]), tmp_path / "ds", val_fraction=0, test_fraction=0, progress_bar=False)
    cfg = compose_cfg(*QUICK, f"data.path={tmp_path / 'ds'}", fast=False, output_dir=tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="agent_lightning"):
        metrics = train(cfg)
    assert "test/acc" not in metrics and "val/acc" not in metrics and metrics["train/acc"] > 0.5
    messages = caplog.text
    assert "no validation split" in messages and "no test split: testing skipped" in messages
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2 * 12  # 3,000 rows in batches of 256: 12 per epoch


def test_model_width_comes_from_the_manifest_and_a_disagreeing_value_is_refused(
    compose_cfg, task, tmp_path: Path
) -> None:
    prepare((task[0][:500], task[1][:500]), tmp_path / "ds", progress_bar=False)
    cfg = compose_cfg(*QUICK, f"data.path={tmp_path / 'ds'}", fast=False)
    assert (cfg.model.input_dim, cfg.model.output_dim) == (32, 6)
    with pytest.raises(ConfigError, match=r"model.input_dim=64 disagrees with the data's 32 features \(data.path="):
        compose_cfg(*QUICK, f"data.path={tmp_path / 'ds'}", "model.input_dim=64", fast=False)
    with pytest.raises(ConfigError, match=r"model.output_dim=3 disagrees with the data's 10 classes \(data.source\)"):
        compose_cfg("model.output_dim=3")
    with pytest.raises(ConfigError, match=r"data=dataset needs data\.path="):
        run(compose_cfg(*QUICK, fast=False))


@pytest.mark.timeout(120)
def test_a_truncated_shard_stops_the_command_line_run_naming_it(task, tmp_path: Path) -> None:
    prepare((task[0][:1000], task[1][:1000]), tmp_path / "ds", progress_bar=False)
    shard = tmp_path / "ds" / "train-00000.x.npy"
    shard.write_bytes(shard.read_bytes()[:-64])
    result = run_cli("data=dataset", f"data.path={tmp_path / 'ds'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output
    assert "train-00000.x.npy has" in output and "truncated or altered" in output
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before the first step


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_ddp_ranks_over_an_uneven_row_count_cover_every_row(compose_cfg, tmp_path: Path) -> None:
    rows = 5_003
    x = np.random.default_rng(0).normal(size=(rows, 8)).astype(np.float32)
    x[:, 0] = np.arange(rows)  # the row's id, to count what each rank saw
    y = (x[:, 1] > 0).astype(np.int64)
    manifest = prepare((x, y), tmp_path / "ds", val_fraction=0.1, test_fraction=0, progress_bar=False)
    seen = tmp_path / "seen"
    metrics = run(
        compose_cfg(
            *QUICK,
            f"data.path={tmp_path / 'ds'}",
            "strategy=ddp",
            "devices=2",
            "trainer.max_epochs=1",
            "+callbacks.recorder._target_=tests.helpers.SampleRecorder",
            f"+callbacks.recorder.out_dir={seen}",
            fast=False,
            output_dir=tmp_path / "run",
        )
    )
    ranks = [torch.load(seen / f"rank{r}.pt")[:, 0].long() for r in range(2)]
    train_rows = manifest["splits"]["train"]["rows"]
    assert train_rows % 256 and abs(len(ranks[0]) - len(ranks[1])) <= 1
    ids = torch.cat(ranks)
    assert len(ids) == train_rows and len(torch.unique(ids)) == train_rows  # every row, once
    assert metrics["val/acc"] > 0.8


def test_a_nan_written_into_a_val_shard_stops_the_run_in_one_line(task, tmp_path: Path) -> None:
    from agent_lightning.errors import ConfigError, user_facing

    manifest = prepare((task[0][:2000], task[1][:2000]), tmp_path / "ds", progress_bar=False)
    shard = np.load(tmp_path / "ds" / manifest["splits"]["val"]["shards"][0]["files"]["x"]["file"], mmap_mode="r+")
    shard[3, 1] = np.nan  # after prepare, which refuses NaN: a disk error, or a hand edit
    shard.flush()
    with pytest.raises(ConfigError) as caught:
        train(compose_config([*QUICK, f"data.path={tmp_path / 'ds'}", "trainer.max_epochs=1"], tmp_path / "run"))
    assert user_facing(caught.value) == (2, str(caught.value))
    assert str(caught.value).startswith("1 validation batch holds NaN or inf observations: the val split of data.")

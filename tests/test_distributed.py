"""Two CPU ranks (gloo), started the way users start them: every test here is bounded in time."""

from pathlib import Path

import pytest
import torch

from agent_lightning.data import ClusterTask
from agent_lightning.train import run, train

from .conftest import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_ddp_ranks_see_disjoint_shards_and_match_one_process(compose_cfg, tmp_path: Path) -> None:
    seen_dir = tmp_path / "seen"
    common = ["trainer.max_epochs=3", "data.batch_size=256"]
    ddp = run(
        compose_cfg(
            *common,
            "strategy=ddp",
            "devices=2",
            "+callbacks.recorder._target_=tests.helpers.SampleRecorder",
            f"+callbacks.recorder.out_dir={seen_dir}",
            output_dir=tmp_path / "ddp",
        )
    )
    ranks = [torch.load(seen_dir / f"rank{r}.pt") for r in range(2)]
    expected = ClusterTask(seed=42).samples(0, 16384)[0]
    assert len(ranks[0]) == len(ranks[1]) == 8192
    together = torch.cat(ranks)
    assert len(torch.unique(together, dim=0)) == len(together) == 16384  # disjoint
    assert torch.equal(torch.unique(together, dim=0), torch.unique(expected, dim=0))  # cover the epoch

    single = train(compose_cfg(*common, output_dir=tmp_path / "single"))
    assert ddp["val/acc"] > 0.8
    assert abs(ddp["val/acc"] - single["val/acc"]) < 0.03
    assert abs(ddp["test/acc"] - single["test/acc"]) < 0.03
    assert Path(ddp["best_model_path"]).is_file()


def test_multirun_with_ddp_gives_one_directory_and_one_log_per_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m",
        "strategy=ddp",
        "devices=2",
        "optimizer.lr=1e-3,3e-3",
        "data.train_size=8192",
        "data.val_size=1024",
        "data.test_size=1024",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    for job, lr in zip(jobs, ("0.001", "0.003"), strict=True):
        job_dir = sweep / job
        files = [".hydra", "checkpoints", "csv", "summary.json", "train.log"]
        assert sorted(p.name for p in job_dir.iterdir()) == files
        assert f"optimizer.lr={lr}" in (job_dir / ".hydra" / "overrides.yaml").read_text().replace("'", "")
        assert (job_dir / "checkpoints" / "last.ckpt").is_file()
        assert "Final:" in (job_dir / "train.log").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]  # ranks made no stray run directories
    assert output.count("Final:") == 2  # rank 0 reports once per job
    assert "GLOBAL_RANK: 1" not in output


def test_env_eval_after_sharded_training_plays_the_gathered_final_weights(compose_cfg, tmp_path: Path) -> None:
    pytest.importorskip("gymnasium")
    from agent_lightning.collect import collect

    collect("cartpole", tmp_path / "demos", steps=5000, random_episodes=5)
    common = ["experiment=bc_cartpole", f"data.path={tmp_path / 'demos'}", "trainer.max_epochs=2", "callbacks=none"]
    # No checkpoint to read the policy from: the FSDP shards are gathered (on every rank) for rank 0 to play.
    cfg = compose_cfg(*common, "strategy=fsdp", "devices=2", "test=false", fast=False, output_dir=tmp_path / "fsdp")
    metrics = run(cfg)
    assert metrics["env/return_mean"] == 500.0 and metrics["env/success_rate"] == 1.0
    assert (tmp_path / "fsdp" / "env_eval" / "episodes.csv").is_file()

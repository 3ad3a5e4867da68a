"""The user's own data: shard files read lazily, bad shards refused with the file's name."""

from pathlib import Path

import numpy as np
import pytest
import torch

from agent_lightning.data import ClusterTask, FileSource, write_shards
from agent_lightning.errors import ConfigError
from agent_lightning.train import train

from .conftest import run_cli


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    write_shards(*ClusterTask(seed=7).samples(0, 24_000), tmp_path / "shards", shard_size=5_000)
    return tmp_path / "shards"


def test_samples_span_shards_in_file_order(shards: Path) -> None:
    source = FileSource(str(shards / "*.pt"), num_features=128, num_classes=10)
    assert len(source) == 24_000 and len(source.files) == 5
    features, labels = source.samples(4_990, 10_010)  # crosses two shard boundaries
    expected_x, expected_y = ClusterTask(seed=7).samples(4_990, 10_010)
    assert torch.equal(features, expected_x) and torch.equal(labels, expected_y)


def test_npz_shards_read_like_pt(tmp_path: Path) -> None:
    x, y = ClusterTask().samples(0, 100)
    np.savez(tmp_path / "a.npz", features=x.numpy(), labels=y.numpy())
    features, labels = FileSource(str(tmp_path), num_features=128, num_classes=10).samples(0, 100)
    assert torch.equal(features, x) and torch.equal(labels, y)


def test_training_on_files_learns(compose_cfg, shards: Path) -> None:
    metrics = train(
        compose_cfg(
            "data=files",
            f"data.source.paths={shards}",
            "data.val_size=2000",
            "data.test_size=2000",
            "data.batch_size=256",
            "trainer.max_epochs=3",
        )
    )
    assert metrics["val/acc"] > 0.8 and "data/reachable_acc" not in metrics


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "shard-00002.pt").write_bytes(b"not a checkpoint"), "shard-00002.pt cannot be read"),
        (
            lambda d: torch.save(
                {"features": torch.zeros(10, 64), "labels": torch.zeros(10, dtype=torch.long)}, d / "shard-00009.pt"
            ),
            r"expected \[N, 128\]",
        ),
        (
            lambda d: torch.save(
                {"features": torch.zeros(10, 128), "labels": torch.full((10,), 12)}, d / "shard-00009.pt"
            ),
            "labels outside 0..9",
        ),
    ],
)
def test_a_bad_shard_is_named(shards: Path, damage, message: str) -> None:
    damage(shards)
    with pytest.raises(ConfigError, match=message):
        source = FileSource(str(shards), num_features=128, num_classes=10)
        source.samples(0, len(source))


@pytest.mark.timeout(120)
def test_cli_reports_missing_and_corrupt_files(tmp_path: Path, shards: Path) -> None:
    missing = run_cli("data=files", f"data.source.paths={tmp_path / 'nowhere'}/*.pt", cwd=tmp_path)
    assert missing.returncode != 0 and "matches no .pt or .npz file" in missing.stdout + missing.stderr
    (shards / "shard-00000.pt").write_bytes(b"\x00garbage")
    corrupt = run_cli("data=files", f"data.source.paths={shards}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert corrupt.returncode != 0 and "shard-00000.pt cannot be read" in corrupt.stdout + corrupt.stderr
    for result in (missing, corrupt):
        output = result.stdout + result.stderr
        assert "Traceback" not in output and "Error in call to target" not in output


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_bad_shard_read_by_one_rank_only_is_still_reported(tmp_path: Path, shards: Path) -> None:
    # Rank 1 alone reads shard 3 (train samples 10,000..19,999 of 20,000 go to rank 1).
    torch.save(
        {"features": torch.zeros(5_000, 64), "labels": torch.zeros(5_000, dtype=torch.long)}, shards / "shard-00003.pt"
    )
    result = run_cli(
        "data=files",
        f"data.source.paths={shards}",
        "data.val_size=2000",
        "data.test_size=2000",
        "strategy=ddp",
        "devices=2",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    assert "error on rank 1: shard" in output and "shard-00003.pt" in output
    assert "Traceback" not in output

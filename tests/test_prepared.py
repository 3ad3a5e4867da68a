"""Reading prepared datasets: rank parts, resumable order, bounded memory, integrity checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agent_lightning.data import BlockBatchLoader, PreparedDataset
from agent_lightning.errors import ConfigError
from agent_lightning.prepare import prepare


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    rows = 10_007  # divides by no batch or rank count used below
    x = np.arange(rows, dtype=np.float32).reshape(-1, 1).repeat(4, axis=1)
    y = np.arange(rows) % 5
    prepare((x, y), tmp_path / "ds", shard_rows=3000, val_fraction=0.1, test_fraction=0.0, progress_bar=False)
    return tmp_path / "ds"


def _epoch(loader: BlockBatchLoader) -> list[torch.Tensor]:
    return [x[:, 0] for x, _ in loader]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_take_equal_steps_disjoint_rows_and_cover_the_epoch(dataset: Path, world: int) -> None:
    split = PreparedDataset(dataset).splits["train"]
    loaders = [BlockBatchLoader(split, 64, rank=r, world=world, seed=3, block_rows=512) for r in range(world)]
    for loader in loaders:
        loader.sampler.set_epoch(1)
    epochs = [_epoch(loader) for loader in loaders]
    assert len({len(e) for e in epochs}) == 1 and len(epochs[0]) == len(loaders[0])
    assert all(len(batch) > 0 for e in epochs for batch in e)
    seen = torch.cat([torch.cat(e) for e in epochs])
    assert set(seen.tolist()) == set(split.rows_of(0, split.rows)[0][:, 0].tolist())  # every training row
    remainder = split.rows % (64 * world)
    # Once each; only when fewer rows than ranks are left does a rank take one row again.
    assert len(seen) - split.rows == (world - remainder if 0 < remainder < world else 0)
    for loader in loaders:
        loader.sampler.set_epoch(2)
    assert not torch.equal(torch.cat(_epoch(loaders[0])), torch.cat(epochs[0]))  # a new order each epoch


def test_features_stay_paired_with_labels_and_eval_is_in_order(dataset: Path) -> None:
    split = PreparedDataset(dataset).splits["val"]
    parts = [list(BlockBatchLoader(split, 100, rank=r, world=2, train=False)) for r in range(2)]
    assert len(parts[0]) == len(parts[1])
    for part in parts:
        for x, y in part:
            assert torch.equal(x[:, 0].long() % 5, y)
    together = torch.cat([x[:, 0] for part in parts for x, _ in part])
    assert torch.equal(together, torch.from_numpy(split.rows_of(0, 2 * (split.rows // 2))[0][:, 0]))


def test_loader_resumes_mid_epoch_and_a_position_on_other_data_starts_fresh(dataset: Path) -> None:
    split = PreparedDataset(dataset).splits["train"]
    loader = BlockBatchLoader(split, 128, seed=1, block_rows=256, fingerprint="abc")
    loader.sampler.set_epoch(4)
    full = _epoch(loader)
    it = iter(loader)
    for _ in range(7):
        next(it)
    state = loader.state_dict()
    assert state == {"epoch": 4, "batches_served": 7, "fingerprint": "abc"}
    resumed = BlockBatchLoader(split, 128, seed=1, block_rows=256, fingerprint="abc")
    resumed.load_state_dict(state)
    rest = _epoch(resumed)
    assert len(rest) == len(full) - 7 and all(torch.equal(a, b) for a, b in zip(rest, full[7:], strict=True))
    other = BlockBatchLoader(split, 128, seed=1, block_rows=256, fingerprint="new")
    other.load_state_dict(state)
    assert len(_epoch(other)) == len(full)


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_resident_memory_stays_flat_while_reading_a_larger_dataset(tmp_path: Path) -> None:
    # 96 MB of features, read through a whole epoch with a 32 MB budget for growth.
    rows, width = 196_608, 128
    x = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=(rows, width))
    for lo in range(0, rows, 32_768):
        x[lo : lo + 32_768] = np.random.default_rng(lo).normal(size=(min(32_768, rows - lo), width))
    x.flush()
    np.save(tmp_path / "y.npy", np.arange(rows) % 10)
    del x
    prepare(tmp_path / "x.npy", tmp_path / "ds", label=str(tmp_path / "y.npy"), val_fraction=0, test_fraction=0,
            progress_bar=False)  # fmt: skip
    (tmp_path / "x.npy").unlink()
    split = PreparedDataset(tmp_path / "ds").splits["train"]
    loader = BlockBatchLoader(split, 512, seed=0)
    before = _rss_kib()
    peak, total = before, 0.0
    for features, _ in loader:
        total += float(features[:, 0].sum())
        peak = max(peak, _rss_kib())
    data_mib = rows * width * 4 / 2**20
    assert (peak - before) / 1024 < 32 < data_mib, (peak - before) / 1024


def test_truncated_altered_and_mismatched_shards_are_named(dataset: Path) -> None:
    shard = dataset / "train-00001.x.npy"
    original = shard.read_bytes()
    shard.write_bytes(original[:-100])
    with pytest.raises(ConfigError, match=r"shard .*train-00001.x.npy has \d+ bytes but the manifest says"):
        PreparedDataset(dataset)
    altered = bytearray(original)
    altered[-7] ^= 0x40  # one flipped bit: a different float, same size
    shard.write_bytes(bytes(altered))
    PreparedDataset(dataset)  # sizes match: only the checksum can tell
    with pytest.raises(ConfigError, match=r"train-00001.x.npy fails its SHA-256 checksum"):
        PreparedDataset(dataset, verify=True)
    shard.write_bytes(original)
    PreparedDataset(dataset, verify=True)
    manifest = json.loads((dataset / "manifest.json").read_text())
    manifest["splits"]["train"]["rows"] += 1
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"split 'train' says \d+ rows but its shards hold"):
        PreparedDataset(dataset)
    (dataset / "manifest.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"manifest\.json is not valid JSON"):
        PreparedDataset(dataset)


@pytest.mark.parametrize("bad", [99, -1])
def test_a_label_outside_the_classes_is_named_with_its_shard_when_first_read(dataset: Path, bad: int) -> None:
    labels = np.load(dataset / "train-00001.y.npy", mmap_mode="r+")  # altered in place: same size, same manifest
    labels[7] = bad
    labels.flush()
    data = PreparedDataset(dataset)  # sizes match: opening cannot tell (only data.verify=true's checksums)
    loader = BlockBatchLoader(data.splits["train"], batch_size=500, shuffle=False, block_rows=1000)
    batches = iter(loader)
    for _ in range(6):  # shard 0's 3,000 rows are fine
        next(batches)
    with pytest.raises(
        ConfigError, match=rf"shard .*train-00001.y.npy holds label {bad}, outside 0..4 \(num_classes=5"
    ):
        next(batches)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["splits"]["train"]["shards"][0]["files"]["x"].update(file="../elsewhere.x.npy"), "not a file of"),
        (lambda m: m["splits"]["val"]["shards"][0]["files"]["y"].update(file="/etc/passwd"), "not a file of"),
        (lambda m: m.update(num_classes=m["num_classes"] - 1), "counts 5 classes, not 4"),  # its labels reach 4
        (lambda m: m.update(num_features=m["num_features"] + 1), "statistics.mean must hold num_features=5"),
        (lambda m: m["splits"].pop("train"), "split 'train' lacks its rows or shards"),
    ],
)
def test_an_edited_manifest_is_named_before_any_shard_is_read(dataset: Path, edit, message: str) -> None:
    manifest = json.loads((dataset / "manifest.json").read_text())
    edit(manifest)
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=rf"manifest\.json: .*{message}.*: altered or damaged; re-run prepare"):
        PreparedDataset(dataset)

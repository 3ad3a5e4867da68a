from itertools import pairwise
from types import SimpleNamespace

import pytest
import torch

from agent_lightning.data import AgentDataModule, ClusterTask, SliceBatchLoader
from agent_lightning.data.datamodule import shard_of
from agent_lightning.data.synthetic import BLOCK_SIZE
from agent_lightning.errors import ConfigError
from agent_lightning.runs.data_resume import data_batching


def test_samples_are_a_pure_function_of_seed_and_index() -> None:
    task = ClusterTask(seed=3)
    features, labels = task.samples(0, 3 * BLOCK_SIZE)
    # Any window, across block boundaries, equals the same rows of the full set.
    lo, hi = BLOCK_SIZE - 5, 2 * BLOCK_SIZE + 7
    f2, y2 = ClusterTask(seed=3).samples(lo, hi)
    assert torch.equal(f2, features[lo:hi]) and torch.equal(y2, labels[lo:hi])
    f3, _ = ClusterTask(seed=4).samples(lo, hi)
    assert not torch.equal(f3, f2)


def test_task_is_learnable_with_known_ceiling() -> None:
    task = ClusterTask(cluster_std=2.5)
    features, labels = task.samples(0, 20_000)
    assert torch.bincount(labels, minlength=10).min() > 1500  # classes balanced
    ceiling = task.nearest_centre_accuracy(features, labels)
    assert 0.93 < ceiling < 0.995
    noisy = ClusterTask(cluster_std=2.5, label_noise=0.2)
    assert noisy.nearest_centre_accuracy(*noisy.samples(0, 20_000)) == pytest.approx(0.8 * ceiling, abs=0.02)


def test_shards_are_disjoint_equal_and_cover_the_split() -> None:
    shards = [shard_of(100, 1003, rank, 4) for rank in range(4)]
    assert [s.stop - s.start for s in shards] == [250] * 4
    assert all(a.stop == b.start for a, b in pairwise(shards))
    assert shards[0].start == 100 and shards[-1].stop == 1100  # 3 leftover samples dropped


def _datamodule(rank: int, world: int, **kwargs) -> AgentDataModule:
    dm = AgentDataModule(ClusterTask(), train_size=4096, val_size=1024, test_size=1024, batch_size=256, **kwargs)
    dm.trainer = SimpleNamespace(global_rank=rank, world_size=world, strategy=SimpleNamespace(root_device="cpu"))
    return dm


def test_each_rank_builds_only_its_shard_and_splits_the_global_batch() -> None:
    full_x, _ = ClusterTask().samples(0, 4096)
    seen = []
    for rank in range(2):
        dm = _datamodule(rank, 2)
        dm.setup("fit")
        assert dm.local_batch_size == 128
        assert (dm.data_parallel_rank, dm.data_parallel_size) == (rank, 2)
        assert data_batching(dm) == {"batch_size": 256, "ranks": 2}  # what a checkpoint records of the batching
        train_x, _ = dm._splits["train"]
        assert torch.equal(train_x, full_x[rank * 2048 : (rank + 1) * 2048])
        seen.append(torch.cat([x for x, _ in dm.train_dataloader()]))
        assert "test" not in dm._splits  # test split built only when testing
    together = torch.cat(seen)
    assert len(together) == 4096 and len(torch.unique(together[:, 0])) == 4096


def test_global_batch_must_divide_across_ranks() -> None:
    dm = AgentDataModule(ClusterTask(), batch_size=255)
    dm.trainer = SimpleNamespace(global_rank=0, world_size=2, strategy=SimpleNamespace(root_device="cpu"))
    with pytest.raises(ConfigError, match=r"data.batch_size=255 .* 2 data-parallel ranks"):
        dm.setup("fit")


def test_loader_serves_slices_shuffled_per_epoch_and_in_order_for_eval() -> None:
    x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    train = SliceBatchLoader(x, y, batch_size=3, shuffle=True, drop_last=True, seed=1)
    assert len(train) == 3
    epoch0 = torch.cat([b for b, _ in train])
    assert torch.equal(epoch0, torch.cat([b for b, _ in train]))  # same epoch, same order
    train.sampler.set_epoch(1)
    epoch1 = torch.cat([b for b, _ in train])
    assert not torch.equal(epoch0, epoch1) and len(epoch1) == 9
    assert torch.equal(epoch1, x[train.sampler.order()][:9])  # the batches walk the epoch's permutation
    for fx, fy in train:
        assert torch.equal(fx[:, 0].long(), fy)  # features stay paired with labels
    val = SliceBatchLoader(x, y, batch_size=4)
    assert [len(b) for b, _ in val] == [4, 4, 2]
    assert torch.equal(torch.cat([b for b, _ in val]), x)


def test_loader_resumes_mid_epoch_at_the_next_unseen_batch() -> None:
    x, y = torch.arange(20.0).unsqueeze(1), torch.arange(20)
    loader = SliceBatchLoader(x, y, batch_size=4, shuffle=True, drop_last=True, seed=7)
    loader.sampler.set_epoch(2)
    full = [b for b, _ in loader]
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    assert state == {"epoch": 2, "batches_served": 2}
    resumed = SliceBatchLoader(x, y, batch_size=4, shuffle=True, drop_last=True, seed=7)
    resumed.load_state_dict(state)
    rest = [b for b, _ in resumed]
    assert len(rest) == 3 and all(torch.equal(a, b) for a, b in zip(rest, full[2:], strict=True))
    assert len([b for b in resumed]) == 5  # the following epoch is whole again


def test_global_order_gives_every_world_size_the_same_global_batches() -> None:
    def global_batches(world: int) -> list[torch.Tensor]:
        loaders = []
        for rank in range(world):
            dm = _datamodule(rank, world, global_order=True)
            dm.setup("fit")
            loader = dm.train_dataloader()
            loader.sampler.set_epoch(3)
            loaders.append(list(loader))
        return [torch.cat([loaders[r][k][0] for r in range(world)]) for k in range(len(loaders[0]))]

    one, two = global_batches(1), global_batches(2)
    assert len(one) == len(two) == 16
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))


def test_batches_already_on_the_device_pass_through_and_others_move() -> None:
    from agent_lightning.data.base import RankBatchesDataModule

    data = RankBatchesDataModule(batch_size=2, num_classes=3)
    batch = (torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    group = (batch, batch)
    cpu, meta = torch.device("cpu"), torch.device("meta")
    assert data.transfer_batch_to_device(group, cpu, 0) is group
    assert data.transfer_batch_to_device(batch, cpu, 0) is batch
    moved = data.transfer_batch_to_device(group, meta, 0)  # not there yet: Lightning's own transfer
    assert all(t.device == meta for pair in moved for t in pair)

"""The training accuracy count: exact whether each batch is counted at once or held back with others."""

from __future__ import annotations

import pytest
import torch

from agent_lightning.epoch_counts import PENDING_ELEMENTS, EpochCounts


def _batches(count: int, rows: int = 512, classes: int = 10) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        (torch.randn(rows, classes, generator=generator), torch.randint(0, classes, (rows,), generator=generator))
        for _ in range(count)
    ]


def _right(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
    return sum(int((logits.argmax(-1) == labels).sum()) for logits, labels in batches)


def test_held_back_batches_count_exactly_across_flushes() -> None:
    batches = _batches(PENDING_ELEMENTS // 5120 * 2 + 7)  # two full flushes of held logits and a partial one
    counts = EpochCounts()
    for logits, labels in batches:
        counts.defer(logits, labels)
    seen = 512 * len(batches)
    assert counts.seen == counts.samples == seen
    accuracy = counts.accuracy()
    assert accuracy is not None and float(accuracy) == pytest.approx(_right(batches) / seen)
    assert counts.correct() == _right(batches)


def test_class_probabilities_count_their_most_likely_class() -> None:
    ((logits, labels),) = _batches(1)
    probabilities = torch.nn.functional.one_hot(labels, 10).float() * 0.7 + 0.03
    counts = EpochCounts()
    counts.defer(logits, probabilities)
    assert counts.correct() == _right([(logits, labels)])


def test_counted_held_and_restored_batches_add_up_and_an_epoch_starts_from_zero() -> None:
    first, second = _batches(2)
    counts = EpochCounts()
    counts.restore(correct=100, seen=400)  # a checkpoint written mid-epoch
    counts.count((first[0].argmax(-1) == first[1]).sum(), 512)  # a compiled step's own count
    counts.defer(*second)
    assert counts.seen == 400 + 1024 and counts.samples == 1024
    assert counts.correct() == 100 + _right([first, second])
    counts.defer(*first)
    counts.reset_accuracy()
    assert counts.accuracy() is None and counts.correct() == 0


def test_a_multi_rank_checkpoint_holds_the_ranks_mean_counts_so_the_resumed_epoch_means_are_exact(
    compose_cfg, monkeypatch
) -> None:
    # Only rank 0 writes the checkpoint, and every rank restores it: it must hold both ranks' samples.
    from types import SimpleNamespace

    from agent_lightning.fit import build_module

    other_rank = torch.tensor([50.0, 100.0, 80.0], dtype=torch.float64)  # rank 1: 50 right of 100, mean loss 0.8
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda totals: totals.add_(other_rank))
    saving = build_module(compose_cfg())
    saving._trainer = SimpleNamespace(world_size=2)  # as attached to a two-rank Trainer
    saving._counts.count(torch.tensor(30), 100)  # rank 0: 30 right of 100
    saving._counts.add_losses(torch.tensor([0.6, 0.4]), [50, 50])  # mean loss 0.5
    checkpoint: dict = {}
    saving.on_save_checkpoint(checkpoint)
    assert checkpoint["train_accuracy_count"] == pytest.approx({"correct": 40.0, "seen": 100, "loss_sum": 65.0})

    accuracies, losses = [], []
    for right_after, loss_after in ((20, 0.2), (40, 0.3)):  # each rank resumes, then counts 100 more samples
        rank = build_module(compose_cfg())
        rank.on_load_checkpoint(checkpoint)
        rank._counts.count(torch.tensor(right_after), 100)
        rank._counts.add_losses(torch.tensor([loss_after]), [100])
        accuracies.append(float(rank._counts.accuracy()))
        losses.append(float(rank._counts.mean_loss()))
    assert sum(accuracies) / 2 == pytest.approx((30 + 50 + 20 + 40) / 400)  # the epoch's logged means
    assert sum(losses) / 2 == pytest.approx((50 + 80 + 20 + 30) / 400)


def test_the_epoch_loss_weighs_every_sample_alike_and_an_old_checkpoint_restores_none() -> None:
    counts = EpochCounts()
    counts.add_losses(torch.tensor([1.0, 2.0], dtype=torch.bfloat16), [512, 512])  # a group of full batches
    counts.add_losses(torch.tensor([3.0, 4.0]), [512, 256])  # a group ending with the epoch's smaller batch
    counts.add_losses(torch.tensor([5.0]), [512])  # one batch per Lightning step
    assert counts.loss_seen == 2304 and counts.mean_loss().dtype == torch.float32
    assert float(counts.mean_loss()) == pytest.approx((512 * (1 + 2 + 3 + 5) + 256 * 4) / 2304)
    counts.restore(correct=10, seen=100)  # a checkpoint from before the loss sum was kept
    assert counts.mean_loss() is None
    counts.add_losses(torch.tensor([0.5]), [512])
    assert float(counts.mean_loss()) == pytest.approx(0.5)
    # Restored counts and nothing trained since: plain numbers, which `self.log` puts on the module's device
    # (a CPU tensor would reach a GPU rank's all-reduce).
    counts.restore(correct=30, seen=100, loss_sum=25.0)
    assert counts.accuracy() == 0.3 and counts.mean_loss() == 0.25

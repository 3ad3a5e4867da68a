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

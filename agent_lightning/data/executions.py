"""Group a training loader's batches, so that one Lightning step runs several optimizer steps.

Lightning's loop costs a fixed slice of every step (hooks, progress, logging), which for a small
model is a large share of it. With `trainer.steps_per_execution=k` the loop sees one item per k
batches and the module runs k optimizer steps on them (as Keras' `steps_per_execution`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor

Batch = tuple[Tensor, Tensor]


class ExecutionBatches:
    """Yields tuples of up to `k` consecutive batches of `loader` (the epoch's last may hold fewer).

    The position in the epoch is the wrapped loader's own, in batches: the wrapper never reads ahead
    of the group it yields, so a checkpoint taken after a group resumes at the next batch.
    """

    batch_sampler = None

    def __init__(self, loader: Any, k: int) -> None:
        self.loader = loader
        self.k = k

    @property
    def sampler(self) -> Any:
        """The wrapped loader's sampler (Lightning calls its `set_epoch`)."""
        return self.loader.sampler

    def __len__(self) -> int:
        return -(-len(self.loader) // self.k)

    def __iter__(self) -> Iterator[tuple[Batch, ...]]:
        group: list[Batch] = []
        for batch in self.loader:
            group.append(batch)
            if len(group) == self.k:
                yield tuple(group)
                group = []
        if group:
            yield tuple(group)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped loader's epoch and position."""
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position of the wrapped loader."""
        self.loader.load_state_dict(state)


def is_group(item: Batch | tuple[Batch, ...]) -> bool:
    """Whether a loader item is a group of batches (`trainer.steps_per_execution` > 1), even a group of one."""
    return not isinstance(item[0], Tensor)


def batches_of(item: Batch | tuple[Batch, ...]) -> tuple[Batch, ...]:
    """The batches in one loader item: a plain (features, targets) batch, or a group of them."""
    return item if is_group(item) else (item,)  # type: ignore[return-value]

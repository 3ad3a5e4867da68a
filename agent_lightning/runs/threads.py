"""CPU threads per rank: split the cores between local ranks unless the user chose, and give them back."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def requested_threads(configured: int | None) -> int | None:
    """The user's explicit choice: `trainer.threads`, else OMP_NUM_THREADS, else None (decide here)."""
    if configured is not None:
        return int(configured)
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(env) if env.isdigit() and int(env) > 0 else None


@contextmanager
def cpu_threads(configured: int | None, cores: int, local_ranks: int, on_cpu: bool) -> Iterator[int]:
    """Set torch's intra-op threads for a run and restore the caller's afterwards; yields the number used.

    An explicit setting (`trainer.threads`, or OMP_NUM_THREADS) is honoured as is. Otherwise ranks
    sharing a CPU split its cores, or they oversubscribe them and run slower than one process.
    """
    before = torch.get_num_threads()
    chosen = requested_threads(configured)
    if chosen is None:
        chosen = max(1, cores // local_ranks) if on_cpu else before
    torch.set_num_threads(chosen)
    try:
        yield chosen
    finally:
        torch.set_num_threads(before)

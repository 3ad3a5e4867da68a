"""Callbacks the tests inject into real runs (importable from spawned ranks)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch


class SampleRecorder(pl.Callback):
    """Saves every training sample (features) a rank sees in epoch 0."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.seen: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if trainer.current_epoch == 0:
            self.seen.append(batch[0].detach().cpu().clone())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        rank = int(os.environ.get("RANK", trainer.global_rank))
        torch.save(torch.cat(self.seen), Path(self.out_dir) / f"rank{rank}.pt")


class CrashError(RuntimeError):
    """Stands for a killed run."""


class CrashAtStep(pl.Callback):
    """Raises before running the batch that would make `step` + 1 optimizer steps."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if trainer.global_step == self.step:
            raise CrashError(f"stopped at step {self.step}")


class StepLosses(pl.Callback):
    """Saves the global (all-rank mean) training loss of each step, from rank 0."""

    def __init__(self, out_file: str) -> None:
        self.out_file = out_file
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, idx) -> None:
        loss = trainer.strategy.reduce(outputs["loss"].detach().clone(), reduce_op="mean")
        self.losses.append(float(loss))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            torch.save(self.losses, self.out_file)


class ShardProbe(pl.Callback):
    """Saves each rank's parameter bytes, and the trained model's outputs on a fixed input."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from torch.distributed.tensor import DTensor

        local = [p.to_local() if isinstance(p, DTensor) else p for p in pl_module.model.parameters()]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        nbytes = sum(t.numel() * t.element_size() for t in local)
        torch.save(nbytes, self.out_dir / f"param_bytes_rank{trainer.global_rank}.pt")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        probe = torch.randn(16, 128, generator=torch.Generator().manual_seed(0)).to(pl_module.device)
        pl_module.eval()
        with torch.no_grad():
            outputs = pl_module(probe)  # every rank takes part: sharded layers communicate
        if trainer.is_global_zero:
            torch.save(outputs.detach().cpu(), self.out_dir / "outputs.pt")


class WallClock(pl.Callback):
    """Writes when fitting started and ended (wall clock) and the torch threads used, as JSON."""

    def __init__(self, out_file: str) -> None:
        self.out_file = out_file
        self.start = 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import time

        self.start = time.time()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import json
        import time

        record = {"start": self.start, "end": time.time(), "threads": torch.get_num_threads()}
        Path(self.out_file).write_text(json.dumps(record))


class SignalAtStep(pl.Callback):
    """Sends `signum` at `step` to this process, or to its parent (the launcher of its ranks), from one rank."""

    def __init__(self, step: int, signum: int, to_parent: bool = False, rank: int = 0) -> None:
        self.step, self.signum, self.to_parent, self.rank = step, signum, to_parent, rank

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            os.kill(os.getppid() if self.to_parent else os.getpid(), self.signum)


class FailOnRank(pl.Callback):
    """Raises an unexpected error on one rank only, at the first step."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank == self.rank:
            raise KeyError("boom on purpose")


class ThreadProbe(pl.Callback):
    """Records torch's intra-op thread count and float32 matmul precision while training runs."""

    def __init__(self) -> None:
        self.threads: int | None = None
        self.matmul_precision: str | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.threads = torch.get_num_threads()
        self.matmul_precision = torch.get_float32_matmul_precision()


class CrashInValidation(pl.Callback):
    """Raises when the validation after epoch `epoch`'s training starts (the sanity check does not count)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.current_epoch == self.epoch:
            raise CrashError(f"stopped in the validation of epoch {self.epoch}")

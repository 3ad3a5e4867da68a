"""Training throughput: the framework's step path against a hand-written PyTorch loop, side by side.

Both train the reference model (MLP 128-256-256-10, Adam 1e-3 with its fused kernel, batch 512) on
the same 100,000 synthetic samples, in this one process, alternating so drift affects both alike.
Each round runs, per batch size: the hand-written loop (eager, and torch.compile'd), a minimal
LightningModule, and `train(cfg)` as configured by default (`trainer.steps_per_execution=auto`),
with one batch per Lightning step, and with `trainer.compile=true`. Prints samples/s (best round) of
each, ratios as the median over rounds of the ratio within a round (this host's speed drifts between
rounds), and, last, `ratio=<framework / hand-written>` for the default eager pair at the first batch
size. With --reference it also runs the reference experiment from the command line at devices=1,
devices=2 (strategy=auto) and strategy=ddp devices=2.

    python benchmarks/throughput.py [--epochs 4] [--rounds 2] [--batch 512 2048 8192]
        [--accelerator cpu|gpu] [--compile-mode default] [--no-compile] [--reference]
        [--steps-per-execution K]
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.nn import functional as F

from agent_lightning.config import compose_config
from agent_lightning.data import ClusterTask, SliceBatchLoader
from agent_lightning.model import AgentMLP
from agent_lightning.train import train

TRAIN_SIZE, FEATURES, CLASSES = 100_000, 128, 10


def _reference_data(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    features, labels = ClusterTask(num_features=FEATURES, num_classes=CLASSES, seed=0).samples(0, TRAIN_SIZE)
    return features.to(device), labels.to(device)


def _steady(rates: list[float]) -> float:
    return statistics.median(rates[1:] if len(rates) > 1 else rates)  # the first epoch warms up


def hand_written(epochs: int, device: torch.device, batch: int, compile_mode: str | None = None) -> float:
    """Plain PyTorch: tensors on the device, a permutation per epoch, sliced batches, fused Adam."""
    torch.manual_seed(0)
    features, labels = _reference_data(device)
    model = AgentMLP(FEATURES, 256, 2, CLASSES).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)  # the kernel the framework picks

    def forward_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    step_loss = torch.compile(forward_loss, mode=compile_mode) if compile_mode else forward_loss

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = step_loss(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return _timed_epochs(features, labels, batch, epochs, device, step)


def _timed_epochs(
    features: torch.Tensor,
    labels: torch.Tensor,
    batch: int,
    epochs: int,
    device: torch.device,
    step: Callable[[torch.Tensor, torch.Tensor], None],
) -> float:
    """Steady samples/s of `step` over shuffled, sliced batches (as the framework's loader serves them)."""
    loader = SliceBatchLoader(features, labels, batch, shuffle=True, drop_last=True)
    rates = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        _sync(device)
        start = time.perf_counter()
        for x, y in loader:
            step(x, y)
        _sync(device)
        rates.append(len(loader) * batch / (time.perf_counter() - start))
    return _steady(rates)


def hand_written_cuda_graph(epochs: int, device: torch.device, batch: int) -> float:
    """The hand-written step captured whole (forward, backward, fused capturable Adam) as one CUDA graph."""
    torch.manual_seed(0)
    features, labels = _reference_data(device)
    model = AgentMLP(FEATURES, 256, 2, CLASSES).to(device)
    lr = torch.tensor(1e-3, device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True, capturable=True)
    static_x, static_y = features[:batch].clone(), labels[:batch].clone()

    def step() -> None:
        loss = F.cross_entropy(model(static_x), static_y)
        loss.backward()
        optimizer.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    optimizer.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()

    def replay(x: torch.Tensor, y: torch.Tensor) -> None:
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()

    return _timed_epochs(features, labels, batch, epochs, device, replay)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MinimalModule(LightningModule):
    """The least a LightningModule can be: Lightning's own per-step cost, for reference."""

    def __init__(self, batch: int) -> None:
        super().__init__()
        self.model = AgentMLP(FEATURES, 256, 2, CLASSES)
        self.batch = batch
        self.rates: list[float] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self.model(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3, fused=True)

    def on_train_epoch_start(self) -> None:
        _sync(self.device)
        self._start = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        _sync(self.device)
        self.rates.append(self.trainer.num_training_batches * self.batch / (time.perf_counter() - self._start))


def lightning_minimal(epochs: int, device: torch.device, batch: int) -> float:
    """A bare Trainer.fit over the same sliced batches (no metrics, logging or checkpoints)."""
    torch.manual_seed(0)
    features, labels = _reference_data(device)
    module = MinimalModule(batch)
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, SliceBatchLoader(features, labels, batch, shuffle=True, drop_last=True))
    return _steady(module.rates)


class EpochRates(Callback):
    """Collects the module's per-epoch training throughput."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.rates.append(pl_module.samples_per_second)


def framework(
    epochs: int, accelerator: str, batch: int, compile_mode: str | None = None, steps_per_execution: int | str = "auto"
) -> float:
    """`train(cfg)` on the same workload; the module measures samples/s of each epoch's steps."""
    compiled = ["trainer.compile=true", f"trainer.compile_mode={compile_mode}"] if compile_mode else []
    overrides = [
        *compiled,
        f"trainer.steps_per_execution={steps_per_execution}",
        f"data.train_size={TRAIN_SIZE}",
        f"data.batch_size={batch}",
        "data.source.seed=0",
        f"trainer.max_epochs={epochs}",
        f"trainer.accelerator={accelerator}",
        "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "callbacks=none",
        "logger=none",
        "test=false",
    ]
    recorder = EpochRates()
    with tempfile.TemporaryDirectory() as out:
        train(compose_config(overrides, output_dir=out), extra_callbacks=[recorder])
    return _steady(recorder.rates)


def reference_cli(*overrides: str) -> float:
    """The reference experiment as a user runs it; samples/s from its final report."""
    with tempfile.TemporaryDirectory() as out:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "agent_lightning.train",
                "experiment=reference",
                *overrides,
                "trainer.enable_progress_bar=false",
                f"hydra.run.dir={out}",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    found = re.search(r"perf/samples_per_s=([0-9.e+]+)", result.stderr + result.stdout)
    assert found, result.stderr[-2000:]
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, nargs="+", default=[512], help="batch sizes to sweep, e.g. 512 2048 8192")
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode of the compiled paths")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled paths")
    parser.add_argument("--reference", action="store_true", help="also run experiment=reference at devices=1 and 2")
    parser.add_argument(
        "--steps-per-execution",
        type=int,
        default=None,
        help="trainer.steps_per_execution of an extra framework path and of the compiled one (default: auto's)",
    )
    args = parser.parse_args()
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    mode = None if args.no_compile else args.compile_mode

    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} samples={TRAIN_SIZE} "
        f"batch={args.batch} epochs={args.epochs} rounds={args.rounds} compile_mode={mode}"
    )
    grouped = args.steps_per_execution or "auto"
    paths: dict[str, Callable[[int], float]] = {
        "hand-written loop": lambda batch: hand_written(args.epochs, device, batch),
        "minimal Lightning": lambda batch: lightning_minimal(args.epochs, device, batch),
        "framework (train)": lambda batch: framework(args.epochs, args.accelerator, batch),
        "framework, steps_per_execution=1": lambda batch: framework(
            args.epochs, args.accelerator, batch, steps_per_execution=1
        ),
    }
    if args.steps_per_execution:
        paths[f"framework, steps_per_execution={grouped}"] = lambda batch: framework(
            args.epochs, args.accelerator, batch, steps_per_execution=grouped
        )
    if mode:
        paths["hand-written, compiled"] = lambda batch: hand_written(args.epochs, device, batch, mode)
        paths["framework, trainer.compile"] = lambda batch: framework(
            args.epochs, args.accelerator, batch, mode, steps_per_execution=grouped
        )
    if device.type == "cuda":
        paths["hand-written, whole-step CUDA graph"] = lambda batch: hand_written_cuda_graph(args.epochs, device, batch)
    rates: dict[tuple[str, int], list[float]] = {(name, b): [] for b in args.batch for name in paths}
    for _ in range(args.rounds):
        for batch in args.batch:
            for name, run_path in paths.items():
                rates[name, batch].append(run_path(batch))
                print(f"  {name} (batch {batch}): {rates[name, batch][-1]:,.0f} samples/s", flush=True)
    if args.reference:  # as configured (strategy=auto), then two DDP ranks as asked for explicitly
        for overrides in (["devices=1"], ["devices=2"], ["strategy=ddp", "devices=2"]):
            print(f"experiment=reference {' '.join(overrides)}: {reference_cli(*overrides):,.0f} samples/s")
    best = {key: max(values) for key, values in rates.items()}

    def ratio(path: str, baseline: str, batch: int) -> float:
        # The median over rounds of the two paths' ratio within a round: drift between rounds cancels.
        pairs = zip(rates[path, batch], rates[baseline, batch], strict=True)
        return statistics.median(mine / theirs for mine, theirs in pairs)

    hand = "hand-written loop"
    for batch in args.batch:
        print(f"-- batch {batch} (samples/s: best round; ratios: median over rounds of the ratio within a round)")
        for name in paths:
            rounds = ", ".join(f"{r:,.0f}" for r in rates[name, batch])
            print(f"{name}: {best[name, batch]:,.0f} samples/s  (rounds: {rounds})")
        print(f"minimal Lightning / hand-written = {ratio('minimal Lightning', hand, batch):.3f}")
        ungrouped = ratio("framework, steps_per_execution=1", hand, batch)
        print(f"framework steps_per_execution=1 / hand-written = {ungrouped:.3f}")
        if args.steps_per_execution:
            extra = ratio(f"framework, steps_per_execution={grouped}", hand, batch)
            print(f"framework steps_per_execution={grouped} / hand-written = {extra:.3f}")
        if device.type == "cuda":
            graphed = ratio("framework, trainer.compile", "hand-written, whole-step CUDA graph", batch)
            print(f"framework compiled / hand-written CUDA graph = {graphed:.3f}")
        if mode:
            print(f"hand-written compiled / hand-written eager = {ratio('hand-written, compiled', hand, batch):.3f}")
            print(f"framework compiled / hand-written eager = {ratio('framework, trainer.compile', hand, batch):.3f}")
            compiled = ratio("framework, trainer.compile", "hand-written, compiled", batch)
            print(f"framework compiled / hand-written compiled = {compiled:.3f}")
        print(f"framework / hand-written = {ratio('framework (train)', hand, batch):.3f}")
    print(f"ratio={ratio('framework (train)', hand, args.batch[0]):.3f}")


if __name__ == "__main__":
    main()

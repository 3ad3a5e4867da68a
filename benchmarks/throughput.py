"""Training throughput: the framework's step path against a hand-written PyTorch loop, epoch by epoch.

Both train the reference model (MLP 128-256-256-10, Adam 1e-3 with its fused kernel, batch 512) on
the same 100,000 synthetic samples, in this one process. Every path that runs in Lightning is paired
with the hand-written loop epoch by epoch: right before each of its epochs, a callback runs one epoch
of the hand-written loop (its own model and optimizer, trained on), so that both see the same state of
this host, whose speed drifts by 10-30% within seconds. Each ratio is the median over all epochs (of
all rounds, the first epoch of a run left out as warm-up) of the path's epoch rate over its paired
hand-written epoch's rate; samples/s are a path's best round (the median of its steady epochs).

Paths, per batch size: the hand-written loop (eager, and torch.compile'd, paired epoch by epoch with
eager), a minimal LightningModule, `train(cfg)` as configured by default (`trainer.steps_per_execution=auto`),
with one batch per Lightning step, and with `trainer.compile=true` (paired with the eager and the
compiled hand-written loop; on CUDA also with the hand-written step captured whole as a CUDA graph).
The last line is `ratio=<framework / hand-written>` for the default eager pair at the first batch size.
With --reference it also runs the reference experiment from the command line at devices=1, devices=2
(strategy=auto) and strategy=ddp devices=2.

    python benchmarks/throughput.py [--epochs 4] [--rounds 2] [--batch 512 2048 8192]
        [--accelerator cpu|gpu] [--compile-mode default] [--no-compile] [--reference]
        [--steps-per-execution K] [--matmul-precision highest|high|medium]
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
from dataclasses import dataclass, field

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.nn import functional as F

from agent_lightning.config import compose_config
from agent_lightning.data import ClusterTask, SliceBatchLoader
from agent_lightning.model import AgentMLP
from agent_lightning.runs.matmul import MATMUL_PRECISIONS
from agent_lightning.train import train

TRAIN_SIZE, FEATURES, CLASSES = 100_000, 128, 10
# `train(cfg)` doing nothing but train: no validation, test, callbacks, loggers or bars in its epochs' time.
TRAINING_ONLY = (
    "trainer.limit_val_batches=0",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks=none",
    "logger=none",
    "test=false",
)
HAND, HAND_COMPILED, HAND_GRAPH = "hand-written loop", "hand-written, compiled", "hand-written, whole-step CUDA graph"
KINDS = {HAND: "eager", HAND_COMPILED: "compiled", HAND_GRAPH: "graph"}  # each hand-written loop's `HandLoop` kind


def _reference_data(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    features, labels = ClusterTask(num_features=FEATURES, num_classes=CLASSES, seed=0).samples(0, TRAIN_SIZE)
    return features.to(device), labels.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class HandLoop:
    """Plain PyTorch: tensors on the device, shuffled sliced batches (the framework's loader), fused Adam.

    `kind` is `eager`, `compiled` (torch.compile of forward and loss, in `compile_mode`) or `graph`
    (CUDA only: forward, backward and a capturable fused Adam captured once as one CUDA graph).
    Each `epoch()` trains one more epoch and returns its samples/s.
    """

    def __init__(
        self,
        device: torch.device,
        batch: int,
        kind: str = "eager",
        compile_mode: str = "default",
        hidden: tuple[int, int] = (256, 2),
    ) -> None:
        torch.manual_seed(0)
        self.device, self.batch = device, batch
        features, labels = _reference_data(device)
        self.loader = SliceBatchLoader(features, labels, batch, shuffle=True, drop_last=True)
        self.model = AgentMLP(FEATURES, *hidden, CLASSES).to(device)  # hidden: (width, layers)
        self.epochs = 0
        if kind == "graph":
            self.step = self._graph_step(features[:batch], labels[:batch])
            return
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3, fused=True)  # what the framework picks
        forward_loss = self._forward_loss
        self.forward_loss = torch.compile(forward_loss, mode=compile_mode) if kind == "compiled" else forward_loss
        self.step = self._eager_step

    def _forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(x), y)

    def _eager_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        loss = self.forward_loss(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def _graph_step(self, x0: torch.Tensor, y0: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], None]:
        lr = torch.tensor(1e-3, device=self.device)
        optimizer = torch.optim.Adam(self.model.parameters(), lr=lr, fused=True, capturable=True)
        static_x, static_y = x0.clone(), y0.clone()

        def step() -> None:
            F.cross_entropy(self.model(static_x), static_y).backward()
            optimizer.step()

        side = torch.cuda.Stream()  # warm up on a side stream, as torch's CUDA graph guide does
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

        return replay

    def epoch(self) -> float:
        """Train one epoch; its samples/s."""
        self.loader.sampler.set_epoch(self.epochs)
        self.epochs += 1
        _sync(self.device)
        start = time.perf_counter()
        for x, y in self.loader:
            self.step(x, y)
        _sync(self.device)
        return len(self.loader) * self.batch / (time.perf_counter() - start)


@dataclass
class Run:
    """One run of a path: its epoch rates, and the epoch rates of each hand-written loop paired with it."""

    rates: list[float] = field(default_factory=list)
    paired: dict[str, list[float]] = field(default_factory=dict)

    @property
    def steady(self) -> float:
        """The median epoch rate after the first (warm-up) epoch."""
        return statistics.median(self.rates[1:] if len(self.rates) > 1 else self.rates)

    def ratios(self, baseline: str) -> list[float]:
        """Per epoch (warm-up left out): this path's rate over its paired `baseline` epoch's rate."""
        pairs = list(zip(self.rates, self.paired[baseline], strict=True))
        return [mine / theirs for mine, theirs in (pairs[1:] if len(pairs) > 1 else pairs)]


class PairedHandEpochs(Callback):
    """Runs one epoch of each hand-written loop right before each training epoch, and records both rates.

    Callbacks' `on_train_epoch_start` runs before the module's, where the module's epoch clock starts,
    and the module stops it at the epoch's last batch: the hand-written epochs are not in its time.
    """

    def __init__(self, hands: dict[str, HandLoop]) -> None:
        self.hands = hands
        self.run = Run(paired={name: [] for name in hands})

    def before_epoch(self) -> None:
        """One epoch of each paired hand-written loop."""
        for name, hand in self.hands.items():
            self.run.paired[name].append(hand.epoch())

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.before_epoch()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        rate = getattr(pl_module, "samples_per_second", None) or pl_module.rates[-1]
        self.run.rates.append(rate)


def hand_runs(device: torch.device, batch: int, epochs: int, kind: str, mode: str, pairing: PairedHandEpochs) -> Run:
    """A hand-written loop's epochs, each right after one epoch of each loop it is paired with."""
    mine = HandLoop(device, batch, kind, mode)
    for _ in range(epochs):
        pairing.before_epoch()
        pairing.run.rates.append(mine.epoch())
    return pairing.run


class MinimalModule(LightningModule):
    """The least a LightningModule can be: Lightning's own per-step cost, for reference."""

    def __init__(self, batch: int) -> None:
        super().__init__()
        self.model = AgentMLP(FEATURES, 256, 2, CLASSES)
        self.batch = batch
        self.samples_per_second = 0.0

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self.model(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3, fused=True)

    def on_train_epoch_start(self) -> None:
        _sync(self.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        if batch_idx + 1 == self.trainer.num_training_batches:  # the epoch's last step, as the framework counts
            _sync(self.device)
            seconds = time.perf_counter() - self._start
            self.samples_per_second = self.trainer.num_training_batches * self.batch / seconds


def lightning_minimal(epochs: int, device: torch.device, batch: int, pairing: PairedHandEpochs) -> Run:
    """A bare Trainer.fit over the same sliced batches (no metrics, logging or checkpoints)."""
    torch.manual_seed(0)
    features, labels = _reference_data(device)
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[pairing],
    )
    trainer.fit(MinimalModule(batch), SliceBatchLoader(features, labels, batch, shuffle=True, drop_last=True))
    return pairing.run


def framework(
    epochs: int,
    accelerator: str,
    batch: int,
    pairing: PairedHandEpochs,
    compile_mode: str | None = None,
    steps_per_execution: int | str = "auto",
) -> Run:
    """`train(cfg)` on the same workload; the module measures samples/s of each epoch's steps."""
    compiled = ["trainer.compile=true", f"trainer.compile_mode={compile_mode}"] if compile_mode else []
    overrides = [
        *compiled,
        f"trainer.float32_matmul_precision={torch.get_float32_matmul_precision()}",  # as the hand-written loops run
        f"trainer.steps_per_execution={steps_per_execution}",
        f"data.train_size={TRAIN_SIZE}",
        f"data.batch_size={batch}",
        "data.source.seed=0",
        f"trainer.max_epochs={epochs}",
        f"trainer.accelerator={accelerator}",
        *TRAINING_ONLY,
    ]
    with tempfile.TemporaryDirectory() as out:
        train(compose_config(overrides, output_dir=out), extra_callbacks=[pairing])
    return pairing.run


def reference_cli(*overrides: str) -> float:
    """The reference experiment as a user runs it; samples/s from its final report."""
    with tempfile.TemporaryDirectory() as out:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "agent_lightning.train",
                "experiment=reference",
                f"trainer.float32_matmul_precision={torch.get_float32_matmul_precision()}",
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


@dataclass
class Path:
    """A path to measure: how to run it for a batch size, and the hand-written loops it is paired with."""

    run: Callable[[int, PairedHandEpochs], Run]
    paired: tuple[str, ...] = (HAND,)


def _paths(args: argparse.Namespace, device: torch.device, mode: str | None) -> dict[str, Path]:
    epochs, accelerator, grouped = args.epochs, args.accelerator, args.steps_per_execution or "auto"

    def hand_path(kind: str, paired: tuple[str, ...]) -> Path:
        return Path(lambda b, p: hand_runs(device, b, epochs, kind, mode or "default", p), paired)

    def framework_path(paired: tuple[str, ...] = (HAND,), **options: object) -> Path:
        return Path(lambda b, p: framework(epochs, accelerator, b, p, **options), paired)  # type: ignore[arg-type]

    paths = {
        HAND: hand_path("eager", ()),
        "minimal Lightning": Path(lambda b, p: lightning_minimal(epochs, device, b, p)),
        "framework (train)": framework_path(),
        "framework, steps_per_execution=1": framework_path(steps_per_execution=1),
    }
    if args.steps_per_execution:
        paths[f"framework, steps_per_execution={grouped}"] = framework_path(steps_per_execution=grouped)
    if mode:
        paths[HAND_COMPILED] = hand_path("compiled", (HAND,))
        against = (HAND, HAND_COMPILED, *((HAND_GRAPH,) if device.type == "cuda" else ()))
        paths["framework, trainer.compile"] = framework_path(against, compile_mode=mode, steps_per_execution=grouped)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run of a path (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of every path, one after the other")
    parser.add_argument("--batch", type=int, nargs="+", default=[512], help="batch sizes to sweep, e.g. 512 2048 8192")
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode of the compiled paths")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled paths")
    parser.add_argument("--reference", action="store_true", help="also run experiment=reference at devices=1 and 2")
    parser.add_argument(
        "--matmul-precision",
        default="highest",
        choices=MATMUL_PRECISIONS,
        help="torch's float32 matmul precision for every path (trainer.float32_matmul_precision)",
    )
    parser.add_argument(
        "--steps-per-execution",
        type=int,
        default=None,
        help="trainer.steps_per_execution of an extra framework path and of the compiled one (default: auto's)",
    )
    args = parser.parse_args()
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    torch.set_float32_matmul_precision(args.matmul_precision)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    mode = None if args.no_compile else args.compile_mode
    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} samples={TRAIN_SIZE} "
        f"batch={args.batch} epochs={args.epochs} rounds={args.rounds} compile_mode={mode} "
        f"matmul_precision={args.matmul_precision}"
    )
    paths = _paths(args, device, mode)
    runs: dict[tuple[str, int], list[Run]] = {(name, b): [] for b in args.batch for name in paths}
    for _ in range(args.rounds):
        for batch in args.batch:
            for name, path in paths.items():
                hands = {other: HandLoop(device, batch, KINDS[other], mode or "default") for other in path.paired}
                run = path.run(batch, PairedHandEpochs(hands))
                runs[name, batch].append(run)
                epochs = ", ".join(f"{r:,.0f}" for r in run.rates)
                print(f"  {name} (batch {batch}): {run.steady:,.0f} samples/s (epochs: {epochs})", flush=True)
    if args.reference:  # as configured (strategy=auto), then two DDP ranks as asked for explicitly
        for overrides in (["devices=1"], ["devices=2"], ["strategy=ddp", "devices=2"]):
            print(f"experiment=reference {' '.join(overrides)}: {reference_cli(*overrides):,.0f} samples/s")

    def ratio(name: str, baseline: str, batch: int) -> str:
        per_epoch = [r for run in runs[name, batch] for r in run.ratios(baseline)]
        low, high = min(per_epoch), max(per_epoch)
        return f"{statistics.median(per_epoch):.3f}  ({len(per_epoch)} epochs, {low:.2f}-{high:.2f})"

    for batch in args.batch:
        print(f"-- batch {batch} (samples/s: best round; ratios: median over epochs paired with the baseline's)")
        for name in paths:
            rounds = ", ".join(f"{run.steady:,.0f}" for run in runs[name, batch])
            print(f"{name}: {max(run.steady for run in runs[name, batch]):,.0f} samples/s  (rounds: {rounds})")
        for name, path in paths.items():
            for baseline in path.paired:
                print(f"{name} / {baseline} = {ratio(name, baseline, batch)}")
    default = [r for run in runs["framework (train)", args.batch[0]] for r in run.ratios(HAND)]
    print(f"ratio={statistics.median(default):.3f}")


if __name__ == "__main__":
    main()

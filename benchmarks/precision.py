"""What float32 matmul precision and bf16 autocast buy on this machine: step time, and the accuracy reached.

The hand-written step (throughput.py's HandLoop: forward, loss, backward, fused Adam; each path its own
model and optimizer) runs under three numerics, taking turns every block of a few batches within the
same epochs, so that this host's drift cancels (`--hidden 512 3` is model=mlp_wide, `2048 4` mlp_large):

- `float32` (`trainer.float32_matmul_precision=highest`, torch's default);
- `float32, matmul medium` (`trainer.float32_matmul_precision=medium`: matrix multiplies take bfloat16
  inputs and sum in float32; the rest stays float32);
- `bf16-mixed` (`trainer.precision=bf16-mixed`: forward and loss under bfloat16 autocast).

Then `train(cfg)` runs the default config under each and prints what it reached (the same seed). The
last line is `ratio=<float32 step time / matmul-medium step time>` at the first batch size.

    python benchmarks/precision.py [--batch 512 2048] [--hidden 256 2] [--steps 192] [--block 8] [--no-accuracy]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import torch
from throughput import HandLoop  # the epoch benchmark beside this one
from torch.nn import functional as F

from agent_lightning.config import compose_config
from agent_lightning.runs.matmul import cpu_has_amx, float32_matmul_precision
from agent_lightning.train import train

FLOAT32, MEDIUM, BF16 = "float32", "float32, matmul medium", "bf16-mixed"
OVERRIDES = {FLOAT32: [], MEDIUM: ["trainer.float32_matmul_precision=medium"], BF16: ["trainer.precision=bf16-mixed"]}
MATMUL = {FLOAT32: "highest", MEDIUM: "medium", BF16: "highest"}  # torch's float32 matmul precision of each


def hand_loops(batch: int, hidden: tuple[int, int]) -> dict[str, HandLoop]:
    """One hand-written loop per numerics, bf16-mixed's forward and loss under bfloat16 autocast."""
    loops = {name: HandLoop(torch.device("cpu"), batch, hidden=hidden) for name in OVERRIDES}
    bf16 = loops[BF16]

    def autocast_forward_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return F.cross_entropy(bf16.model(x), y)

    bf16.forward_loss = autocast_forward_loss
    return loops


def interleaved(batch: int, hidden: tuple[int, int], steps: int, block: int) -> dict[str, float]:
    """Seconds per step of each numerics over `steps` steps (whole turns of `block`), after one warm-up turn."""
    loops = hand_loops(batch, hidden)
    source, names = loops[FLOAT32], list(loops)  # the first loop's batches are everyone's
    if len(source.loader) < block * len(names):  # a turn never fits in an epoch: nothing would ever be timed
        raise SystemExit(
            f"--batch {batch}: {len(source.loader)} batches per epoch, fewer than one turn's "
            f"{block * len(names)} (--block {block} x {len(names)}): lower --block"
        )
    seconds, done, turns, epoch = dict.fromkeys(names, 0.0), 0, 0, 0
    while done < steps:
        source.loader.sampler.set_epoch(epoch)
        batches = list(source.loader)
        epoch += 1
        for start in range(0, len(batches) - block * len(names) + 1, block * len(names)):
            for offset in range(len(names)):
                name = names[(turns + offset) % len(names)]  # who goes first rotates
                chunk = batches[start + offset * block : start + (offset + 1) * block]
                with float32_matmul_precision(MATMUL[name]):
                    began = time.perf_counter()
                    for x, y in chunk:
                        loops[name].step(x, y)
                    if turns:  # the first turn warms every path up
                        seconds[name] += time.perf_counter() - began
            done += block if turns else 0
            turns += 1
            if done >= steps:
                break
    return {name: spent / done for name, spent in seconds.items()}


def reached(name: str) -> str:
    """The default config trained under `name`'s numerics: its final metrics."""
    with tempfile.TemporaryDirectory() as out:
        overrides = [*OVERRIDES[name], "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
        metrics = train(compose_config(overrides, output_dir=out))
    keys = ("train/loss_epoch", "val/acc", "test/acc")  # not its speed: these runs are not paired
    return "  ".join(f"{key}={metrics[key]:.4g}" for key in keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[512, 2048], help="batch sizes")
    parser.add_argument("--steps", type=int, default=192, help="timed steps per numerics and batch size")
    parser.add_argument("--hidden", type=int, nargs=2, default=[256, 2], help="hidden width, layers (mlp_wide: 512 3)")
    parser.add_argument("--block", type=int, default=8, help="batches each numerics runs per turn")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the train(cfg) runs")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("agent_lightning").setLevel(logging.WARNING)
    isa = torch.backends.cpu.get_cpu_capability()
    print(f"torch={torch.__version__} threads={torch.get_num_threads()} cpu={isa} amx={cpu_has_amx()}")
    first_ratio = None
    for batch in args.batch:
        per_step = interleaved(batch, tuple(args.hidden), args.steps, args.block)
        base = per_step[FLOAT32]
        print(f"-- batch {batch}, hidden {args.hidden[0]} x {args.hidden[1]}, {args.steps} steps per numerics")
        for name, spent in per_step.items():
            print(f"{name}: {spent * 1e6:,.0f} us/step ({base / spent:.2f}x the float32 step's speed)")
        first_ratio = first_ratio or base / per_step[MEDIUM]
    if not args.no_accuracy:
        print("-- train(cfg), default config, same seed")
        for name in OVERRIDES:
            print(f"{name}: {reached(name)}", flush=True)
    print(f"ratio={first_ratio:.3f}")


if __name__ == "__main__":
    main()

"""What the framework's training step costs beyond a hand-written step, batch by batch, Lightning's loop left out.

`throughput.py` pairs whole epochs, whose rates drift by 10-30% on a shared host; here the paths take
turns every block of a few batches within the same epochs, so that drift cancels and differences of
1-2% show. In one process, inside `train(cfg)` (default config, batch 512, the reference model):

- `hand-written step`: forward, loss, zero_grad, backward, fused Adam step (throughput.py's HandLoop);
- `same step, framework's model`: that step on the model and optimizer `train(cfg)` built;
- `framework step`: the module's own step for one batch (`AgentModule._train_batch`: the loss, the
  training-accuracy count, the step with its hooks and schedules), without Lightning's loop around it.

The last line is `ratio=<hand-written step time / framework step time>`.

    python benchmarks/step_cost.py [--epochs 8] [--block 8]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from throughput import TRAIN_SIZE, TRAINING_ONLY, HandLoop  # the epoch benchmark beside this one
from torch.nn import functional as F

from agent_lightning.config import compose_config
from agent_lightning.train import train

Step = Callable[[torch.Tensor, torch.Tensor], None]


class InterleavedSteps(Callback):
    """At the second training epoch's start, runs the paths in turns over the hand-written loop's batches."""

    handles_grouped_steps = True  # it acts once, not per batch

    def __init__(self, epochs: int, block: int) -> None:
        self.epochs, self.block = epochs, block
        self.seconds: dict[str, float] = {}
        self.steps = 0

    def _paths(self, module: LightningModule, hand: HandLoop) -> dict[str, Step]:
        model, optimizer = module.model, module.optimizers().optimizer

        def same_step(x: torch.Tensor, y: torch.Tensor) -> None:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return {
            "hand-written step": hand.step,
            "same step, framework's model": same_step,
            "framework step": lambda x, y: module._train_batch(x, y, last_in_epoch=False),
        }

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch != 1:  # the first epoch warms everything up
            return
        hand = HandLoop(pl_module.device, 512)
        paths = self._paths(pl_module, hand)
        names = list(paths)
        self.seconds = dict.fromkeys(names, 0.0)
        turn = self.block * len(names)
        for epoch in range(self.epochs):
            hand.loader.sampler.set_epoch(epoch)
            batches = list(hand.loader)
            for start in range(0, len(batches) - turn + 1, turn):
                first = start // turn % len(names)  # who goes first rotates
                for offset in range(len(names)):
                    name = names[(first + offset) % len(names)]
                    block = batches[start + offset * self.block : start + (offset + 1) * self.block]
                    began = time.perf_counter()
                    for x, y in block:
                        paths[name](x, y)
                    self.seconds[name] += time.perf_counter() - began
                self.steps += self.block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8, help="epochs of the hand-written loop's batches")
    parser.add_argument("--block", type=int, default=8, help="batches each path runs per turn")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    probe = InterleavedSteps(args.epochs, args.block)
    overrides = [
        f"data.train_size={TRAIN_SIZE}",
        "data.source.seed=0",
        "trainer.max_epochs=2",
        *TRAINING_ONLY,
    ]
    with tempfile.TemporaryDirectory() as out:
        train(compose_config(overrides, output_dir=out), extra_callbacks=[probe])
    print(f"torch={torch.__version__} threads={torch.get_num_threads()} batch=512 steps per path={probe.steps}")
    hand = probe.seconds["hand-written step"]
    for name, seconds in probe.seconds.items():
        speed = f"{hand / seconds:.3f} of the hand-written step's speed"
        print(f"{name}: {seconds / probe.steps * 1e6:,.0f} us/step ({speed})")
    print(f"ratio={hand / probe.seconds['framework step']:.3f}")


if __name__ == "__main__":
    main()

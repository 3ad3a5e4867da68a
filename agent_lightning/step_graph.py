"""A whole training step (forward, loss, backward, clipping, optimizer) captured once as a CUDA graph.

For a small policy network a CUDA step is a few dozen tiny kernels, and launching them from Python
costs more than running them. Captured once, the step is one `replay()`: the batch is copied into
fixed input buffers and every kernel runs from the graph. This is what `trainer.compile=true
trainer.compile_mode=reduce-overhead` does on CUDA with `strategy=single` (torch.compile's own
CUDA graphs cover the forward and backward only, and leave the optimizer step and its launches out).

The optimizer must be capturable (its step counter and learning rate live on the device), so that
LR schedules still apply between replays: see `make_capturable`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import Tensor

ForwardLoss = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
# Eager steps before the capture: they allocate the optimizer state and let cuBLAS pick its kernels.
WARMUP_STEPS = 3


def accepts_capturable(factory: Callable[..., torch.optim.Optimizer]) -> bool:
    """Whether the optimizer class takes `capturable=` (Adam, AdamW and most of torch's adaptive optimizers)."""
    target = getattr(factory, "func", factory)
    try:
        return "capturable" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


def make_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Give every parameter group its learning rate as a device tensor, so a replayed step reads the current one."""
    for group in optimizer.param_groups:
        if not isinstance(group["lr"], Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), device=device)


class CapturedStep:
    """Runs training steps of one batch shape: a few eager warm-up steps, then the captured graph.

    A batch of another shape than the first (an epoch's last, smaller one) runs eagerly, into the
    same gradient buffers. Each `step` is a real optimizer step.
    """

    def __init__(
        self,
        forward_loss: ForwardLoss,
        optimizer: torch.optim.Optimizer,
        clip: Callable[[], None] | None = None,
    ) -> None:
        self.forward_loss = forward_loss
        self.optimizer = optimizer
        self.clip = clip
        self.graph: torch.cuda.CUDAGraph | None = None
        self._warm = 0
        self._shape: tuple[torch.Size, torch.Size, torch.dtype, torch.dtype] | None = None
        self._features: Tensor | None = None
        self._targets: Tensor | None = None
        self._outputs: tuple[Tensor, Tensor] | None = None

    def _eager(self, features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        logits, loss = self.forward_loss(features, targets)
        labels = targets if targets.ndim == 1 else targets.argmax(dim=-1)
        hits = (logits.detach().argmax(dim=-1) == labels).sum()
        loss.backward()
        if self.clip is not None:
            self.clip()
        self.optimizer.step()
        return loss.detach(), hits

    def step(self, features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """One optimizer step on this batch: its loss and number of correct predictions (valid until the next step)."""
        shape = (features.shape, targets.shape, features.dtype, targets.dtype)
        if self._shape is None:
            self._shape = shape
        if shape != self._shape:
            return self._off_graph(features, targets)
        if self.graph is None:
            if self._warm < WARMUP_STEPS:
                self._warm += 1
                return self._off_graph(features, targets)
            self._capture(features, targets)
        assert self._features is not None and self._targets is not None and self._outputs is not None
        self._features.copy_(features, non_blocking=True)
        self._targets.copy_(targets, non_blocking=True)
        self.graph.replay()
        return self._outputs  # the graph's own buffers: the next replay overwrites them

    def _off_graph(self, features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        # On a side stream, as torch's CUDA graph guide warms up: the capture must not see work
        # left queued on the default stream.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            # Once captured, the gradients live in the graph's memory: zero them, never free them.
            self.optimizer.zero_grad(set_to_none=self.graph is None)
            outputs = self._eager(features, targets)
        torch.cuda.current_stream().wait_stream(side)
        return outputs

    def _capture(self, features: Tensor, targets: Tensor) -> None:
        self._features, self._targets = features.clone(), targets.clone()
        # Gradients are allocated inside the graph's memory pool and stay there: never set to None again.
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._outputs = self._eager(self._features, self._targets)
        self.graph = graph  # captured, not yet run: `step` replays it for this batch

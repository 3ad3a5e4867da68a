"""The agent's policy network: a plain PyTorch MLP with no Lightning in it."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}
NORMS: dict[str, type[nn.Module] | None] = {
    "none": None,
    "layernorm": nn.LayerNorm,
    "batchnorm": nn.BatchNorm1d,
}


class ObservationNormalizer(nn.Module):
    """`(x - mean) / std` per feature, from the training data's statistics; the identity until set.

    `mean` and `std` are buffers, so they travel in every checkpoint and export with the weights.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.active = False  # skips the arithmetic while the statistics are the identity

    def set_statistics(self, mean: Tensor, std: Tensor) -> None:
        """Use these statistics; a constant feature (std ~ 0) is only centred."""
        std = torch.where(std > 1e-8, std, torch.ones_like(std))
        with torch.no_grad():
            self.mean.copy_(mean.to(self.mean))
            self.std.copy_(std.to(self.std))
        self.active = not (bool((self.mean == 0).all()) and bool((self.std == 1).all()))

    def forward(self, x: Tensor) -> Tensor:
        """Normalised observations, in the input's dtype."""
        if not self.active:
            return x
        return ((x - self.mean) / self.std).to(x.dtype)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # A checkpoint from before normalisation existed has no statistics: keep the identity.
        for name in ("mean", "std"):
            state_dict.setdefault(prefix + name, getattr(self, name).detach().clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        mean, std = state_dict[prefix + "mean"], state_dict[prefix + "std"]
        if isinstance(mean, Tensor) and isinstance(std, Tensor) and not mean.is_meta:
            self.active = not (bool((mean == 0).all()) and bool((std == 1).all()))


class AgentMLP(nn.Module):
    """Observation vector -> action logits, through `num_layers` hidden blocks of equal width.

    Each hidden block is Linear -> [norm] -> activation -> [dropout]. `normalizer` standardises
    observations with the training data's statistics (set from a prepared dataset's manifest). The
    model says how it is parallelised: `parallel_blocks` (FSDP's units, what activation checkpointing
    recomputes) and `tensor_parallel_plan`.
    """

    def __init__(
        self,
        input_dim: int = 128,
        hidden_dim: int = 256,
        num_layers: int = 2,
        output_dim: int = 10,
        dropout: float = 0.0,
        activation: str = "relu",
        norm: str = "none",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"model.activation={activation!r} is not one of {sorted(ACTIVATIONS)}")
        if norm not in NORMS:
            raise ValueError(f"model.norm={norm!r} is not one of {sorted(NORMS)}")
        if num_layers < 1:
            raise ValueError(f"model.num_layers must be >= 1, got {num_layers}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")

        self.normalizer = ObservationNormalizer(input_dim)
        blocks: list[nn.Module] = []
        width = input_dim
        for _ in range(num_layers):
            block: list[nn.Module] = [nn.Linear(width, hidden_dim)]
            norm_cls = NORMS[norm]
            if norm_cls is not None:
                block.append(norm_cls(hidden_dim))
            block.append(ACTIVATIONS[activation]())
            if dropout > 0:
                block.append(nn.Dropout(dropout))
            blocks.append(nn.Sequential(*block))
            width = hidden_dim
        self.hidden = nn.Sequential(*blocks)
        self.head = nn.Linear(width, output_dim)
        self._norm = norm

    def forward(self, x: Tensor) -> Tensor:
        """Return unnormalised action logits for a batch of observations."""
        return self.head(self.hidden(self.normalizer(x)))

    def parallel_blocks(self) -> nn.Sequential:
        """The repeated hidden blocks: one FSDP unit each, and what activation checkpointing recomputes."""
        return self.hidden

    def _linear_names(self) -> list[str]:
        return [f"hidden.{index}.0" for index in range(len(self.hidden))] + ["head"]

    def tensor_parallel_plan(self, degree: int) -> dict[str, Any]:
        """How `degree` tensor-parallel ranks split the Linear layers: column-wise then row-wise, pair by pair.

        A column-wise layer leaves its output features sharded; the activation (and dropout) works on
        the shards, and the row-wise layer after it consumes them and sums the partial results: one
        all-reduce per pair. With an odd number of Linear layers the head stays replicated. Raises
        ValueError where the split cannot be even, or a norm layer would see sharded features.
        """
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

        if self._norm != "none":
            raise ValueError("tensor_parallel > 1 needs model.norm=none (a norm layer needs all features)")
        names = self._linear_names()
        layers = dict(self.named_modules())
        plan: dict[str, Any] = {}
        for column, row in zip(names[0:-1:2], names[1::2], strict=True):
            outputs = layers[column].out_features
            if outputs % degree:
                raise ValueError(f"layer {column} has {outputs} outputs, not divisible by tensor_parallel={degree}")
            plan[column], plan[row] = ColwiseParallel(), RowwiseParallel()
        return plan

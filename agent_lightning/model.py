"""The agent's policy network: a plain PyTorch MLP with no Lightning in it."""

from __future__ import annotations

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


class AgentMLP(nn.Module):
    """Observation vector -> action logits, through `num_layers` hidden blocks of equal width.

    Each hidden block is Linear -> [norm] -> activation -> [dropout]. `layers` holds the Linear
    layers in order, so parallel plans can address them as column/row pairs.
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

    def forward(self, x: Tensor) -> Tensor:
        """Return unnormalised action logits for a batch of observations."""
        return self.head(self.hidden(x))

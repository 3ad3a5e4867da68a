"""The model's own parallel plan: which layers tensor parallelism splits, and what it refuses."""

import pytest
from torch import nn
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

from agent_lightning.errors import ConfigError
from agent_lightning.model import AgentMLP
from agent_lightning.parallel.sharding import tensor_parallel_plan


def _kinds(plan: dict) -> dict[str, str]:
    return {name: "col" if isinstance(style, ColwiseParallel) else "row" for name, style in plan.items()}


def test_linear_layers_pair_column_then_row_and_an_odd_head_stays_whole() -> None:
    assert _kinds(AgentMLP(num_layers=2).tensor_parallel_plan(2)) == {"hidden.0.0": "col", "hidden.1.0": "row"}
    assert isinstance(AgentMLP(num_layers=2).tensor_parallel_plan(2)["hidden.1.0"], RowwiseParallel)
    assert _kinds(AgentMLP(num_layers=3).tensor_parallel_plan(4)) == {
        "hidden.0.0": "col",
        "hidden.1.0": "row",
        "hidden.2.0": "col",
        "head": "row",
    }


@pytest.mark.parametrize(
    ("model", "degree", "message"),
    [
        (AgentMLP(norm="layernorm"), 2, "tensor_parallel > 1 needs model.norm=none"),
        (AgentMLP(hidden_dim=250), 4, "layer hidden.0.0 has 250 outputs, not divisible by tensor_parallel=4"),
        (nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), 2, "Sequential has none: use strategy=fsdp"),
    ],
)
def test_a_model_that_cannot_be_split_is_refused_naming_why(model: nn.Module, degree: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tensor_parallel_plan(model, degree)

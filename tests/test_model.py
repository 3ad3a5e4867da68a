import pytest
import torch

from agent_lightning.model import ACTIVATIONS, NORMS, AgentMLP

NORM_TYPES = {norm for norm in NORMS.values() if norm is not None}


def test_reference_shape_and_parameter_count() -> None:
    model = AgentMLP(input_dim=128, hidden_dim=256, num_layers=2, output_dim=10)
    assert model(torch.randn(7, 128)).shape == (7, 10)
    # 128-256-256-10: (128*256+256) + (256*256+256) + (256*10+10)
    assert sum(p.numel() for p in model.parameters()) == 101_386


@pytest.mark.parametrize("norm", ["none", "layernorm", "batchnorm"])
@pytest.mark.parametrize("activation", ["relu", "gelu", "silu", "tanh"])
def test_every_activation_and_norm_builds_and_backprops(activation: str, norm: str) -> None:
    model = AgentMLP(
        input_dim=8, hidden_dim=16, num_layers=3, output_dim=4, dropout=0.1, activation=activation, norm=norm
    )
    model(torch.randn(5, 8)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    built = {type(m) for m in model.modules()}  # the asked-for blocks, not a default in their place
    assert ACTIVATIONS[activation] in built and (NORMS[norm] in built if NORMS[norm] else not built & NORM_TYPES)


def test_dropout_is_active_only_in_training() -> None:
    model = AgentMLP(input_dim=8, hidden_dim=64, num_layers=2, output_dim=4, dropout=0.5)
    x = torch.randn(3, 8)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"activation": "nope"}, "model.activation"), ({"norm": "x"}, "model.norm"), ({"num_layers": 0}, "num_layers")],
)
def test_bad_arguments_name_the_key(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AgentMLP(**kwargs)

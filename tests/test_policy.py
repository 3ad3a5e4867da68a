"""agent_lightning.Policy: greedy actions on normalised observations, from any checkpoint, never running a pickle."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agent_lightning import Policy
from agent_lightning.config import compose_config
from agent_lightning.errors import ConfigError, user_facing
from agent_lightning.export import load_agent
from agent_lightning.export import main as export_main
from agent_lightning.model import AgentMLP
from agent_lightning.train import train

from .policy_setup import N_ACTIONS, OBS_DIM, QUICK, Payload, malicious_file, scaled_task, trained_run

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    return trained_run(tmp_path_factory)


def _by_hand(model: AgentMLP, obs: np.ndarray) -> np.ndarray:
    """Logits computed outside the model's normaliser: (x - mean) / std, then the layers."""
    x = torch.as_tensor(obs, dtype=torch.float32)
    normalised = (x - model.normalizer.mean) / model.normalizer.std
    with torch.no_grad():
        return model.head(model.hidden(normalised)).numpy()


def test_act_is_the_argmax_on_normalised_observations_for_one_and_a_batch(run) -> None:
    policy = Policy.load(run["ckpt"])
    model = load_agent(run["ckpt"])
    obs, _ = scaled_task(256, seed=11)
    expected = _by_hand(model, obs).argmax(axis=1)
    # The saved statistics matter for these observations: without them the actions differ.
    with torch.no_grad():
        raw = model.head(model.hidden(torch.from_numpy(obs))).argmax(dim=1).numpy()
    assert (raw != expected).mean() > 0.05

    actions = policy.act(obs)
    assert isinstance(actions, np.ndarray) and actions.dtype == np.int64 and actions.shape == (256,)
    np.testing.assert_array_equal(actions, expected)
    for i in range(5):
        one = policy.act(obs[i])
        assert type(one) is int and one == expected[i]
    # Any float or int dtype, torch or numpy or lists: the same actions.
    np.testing.assert_array_equal(policy.act(obs.astype(np.float64)), expected)
    np.testing.assert_array_equal(policy.act(torch.from_numpy(obs)), expected)
    np.testing.assert_array_equal(policy.act(obs[:3].tolist()), expected[:3])
    np.testing.assert_array_equal(policy.act(obs[::-1]), expected[::-1])  # a view with negative strides
    rounded = np.round(obs).astype(np.int32)
    np.testing.assert_array_equal(policy.act(rounded), _by_hand(model, rounded).argmax(axis=1))
    assert policy(obs[0]) == expected[0]
    assert (policy.obs_dim, policy.n_actions, policy.device) == (OBS_DIM, N_ACTIONS, torch.device("cpu"))


def test_action_probs_are_the_softmax_and_policy_wraps_an_in_memory_model(run) -> None:
    model = load_agent(run["ckpt"])
    policy = Policy(model)
    obs, _ = scaled_task(32, seed=12)
    probs = policy.action_probs(obs)
    assert probs.dtype == np.float32 and probs.shape == (32, N_ACTIONS)
    expected = torch.softmax(torch.from_numpy(_by_hand(model, obs)), dim=1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    one = policy.action_probs(obs[0])
    assert one.shape == (N_ACTIONS,) and one.sum() == pytest.approx(1.0, abs=1e-6)
    # A model still being trained (dropout on) acts in inference mode and is handed back in training mode.
    training = AgentMLP(input_dim=OBS_DIM, hidden_dim=32, output_dim=N_ACTIONS, dropout=0.5).train()
    acting = Policy(training)
    np.testing.assert_array_equal(acting.action_probs(obs), acting.action_probs(obs))
    assert training.training


def test_a_wrong_observation_width_names_expected_and_got(run) -> None:
    policy = Policy.load(run["ckpt"])
    with pytest.raises(ValueError, match=r"shape \[7\] does not fit this policy: expected 8 features"):
        policy.act(np.zeros(7))
    with pytest.raises(ValueError, match=r"shape \[3, 9\] does not fit this policy: expected 8 features"):
        policy.act(np.zeros((3, 9)))


def test_a_nan_inf_or_complex_observation_is_refused_not_acted_on(run) -> None:
    policy = Policy.load(run["ckpt"])
    batch = np.zeros((4, 8))
    batch[2, 5] = np.nan
    for bad in (batch, np.full(8, np.inf), torch.full((8,), -float("inf"))):
        with pytest.raises(ValueError, match=r"observation holds NaN or inf values"):
            policy.act(bad)
    with pytest.raises(ValueError, match=r"complex: give real numbers"):
        policy.act(np.ones(8, np.complex64))
    with pytest.raises(ValueError, match=r"observations of dtype <U1 are not numbers: give a float or int array"):
        policy.act(np.array(list("abcdefgh")))
    with pytest.raises(ValueError, match=r"NaN or inf values \(an empty cell, or a number beyond float32's"):
        policy.act(np.full(8, 1e39))  # finite in float64, inf in the model's float32
    assert policy.act(np.zeros((4, 8), np.int32)).shape == (4,)  # finite ints are still fine


def test_acting_imports_neither_lightning_nor_hydra(run) -> None:
    code = (
        "import sys, numpy as np\n"
        "from agent_lightning import Policy\n"
        f"policy = Policy.load({str(run['ckpt'])!r})\n"
        f"print(policy.act(np.zeros({OBS_DIM})), policy.act(np.zeros((3, {OBS_DIM}))).tolist())\n"
        "print(sorted(m for m in ('lightning', 'pytorch_lightning', 'hydra', 'omegaconf') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


def _write_sharded(rank: int, world: int, state: dict[str, torch.Tensor], directory: str, init: str) -> None:
    """One of `world` ranks saving its row-shards of `state` as FSDP2 does: DTensors sharded on dim 0."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    sharded = {k: distribute_tensor(v, mesh, [Shard(0) if v.dim() else Replicate()]) for k, v in state.items()}
    dcp.save({"state_dict": sharded}, checkpoint_id=directory)
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_sharded_checkpoint_acts_like_the_single_file_one(run, tmp_path: Path) -> None:
    checkpoint = torch.load(run["ckpt"], map_location="cpu", weights_only=True)
    sharded = tmp_path / "last.ckpt"  # the directory Lightning writes for strategy=fsdp
    torch.multiprocessing.start_processes(  # forked: the ranks need no fresh interpreter
        _write_sharded,
        args=(2, checkpoint["state_dict"], str(sharded), f"file://{tmp_path / 'rendezvous'}"),
        nprocs=2,
        start_method="fork",
    )
    meta = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")}
    torch.save(meta, sharded / "meta.pt")
    assert sorted(p.name for p in sharded.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]

    from_shards, from_file = Policy.load(sharded), Policy.load(run["ckpt"])
    obs, _ = scaled_task(512, seed=13)
    np.testing.assert_array_equal(from_shards.act(obs), from_file.act(obs))
    torch.testing.assert_close(from_shards.logits(obs), from_file.logits(obs), rtol=0, atol=0)
    # And the sharded directory exports to one file like any checkpoint.
    assert export_main([str(sharded), str(tmp_path / "agent.ts")]) == 0
    np.testing.assert_array_equal(Policy.load(tmp_path / "agent.ts").act(obs), from_file.act(obs))


def test_a_malicious_pickle_is_refused_by_policy_export_and_training(run, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = malicious_file(tmp_path / "evil.ckpt", marker)
    with pytest.raises(ConfigError, match=r"evil.ckpt was refused without running it"):
        Policy.load(evil)
    for suffix in (".pt", ".ts", ".onnx", ".safetensors"):  # whatever the name claims, nothing runs
        with pytest.raises(ConfigError):
            Policy.load(malicious_file(tmp_path / f"evil{suffix}", marker))
    sharded = tmp_path / "evil_dir"
    sharded.mkdir()
    (sharded / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ConfigError, match=r"not a distributed-checkpoint metadata file"):
        Policy.load(sharded)
    assert export_main([str(evil), str(tmp_path / "out.onnx")]) == 2
    assert not (tmp_path / "out.onnx").exists()

    # A training run given it to resume from refuses it while checking its config, before any rank starts.
    cfg = compose_config([*QUICK, f"data.path={run['data']}", f"ckpt_path={evil}"], output_dir=tmp_path / "r")
    with pytest.raises(ConfigError, match=r"^ckpt_path=.*evil.ckpt was refused without running it") as refused:
        train(cfg)
    assert user_facing(refused.value) == (2, str(refused.value)) and "\n" not in str(refused.value)
    assert not (tmp_path / "r" / "checkpoints").exists()
    assert not marker.exists()

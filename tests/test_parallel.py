"""Sharded strategies on 2 CPU ranks (gloo): same numbers as one process, resumable, consolidatable."""

from pathlib import Path

import pytest
import torch

from agent_lightning.export import load_agent
from agent_lightning.launch import LaunchError
from agent_lightning.model import AgentMLP
from agent_lightning.train import run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

TWO_RANKS = {"single": [], "ddp": ["strategy=ddp", "devices=2"]}
TWO_RANKS["fsdp"] = ["strategy=fsdp", "devices=2"]
TWO_RANKS["model_parallel"] = ["strategy=model_parallel", "devices=2", "strategy.tensor_parallel=2"]
# FSDP's memory options change what is kept between forward and backward, not the numbers.
FSDP_OPTIONS = [*TWO_RANKS["fsdp"], "strategy.activation_checkpointing=true", "strategy.reshard_after_forward=false"]


def test_first_steps_agree_across_strategies(compose_cfg, tmp_path: Path) -> None:
    losses = {}
    for name, strategy in {**TWO_RANKS, "fsdp_options": FSDP_OPTIONS}.items():
        out = tmp_path / f"{name}.pt"
        cfg = compose_cfg(
            *strategy,
            "data.global_order=true",  # the same global batches whatever the number of ranks
            "trainer.deterministic=true",
            "trainer.max_steps=10",
            "trainer.limit_val_batches=0",
            "callbacks=none",
            "logger=none",
            "test=false",
            "+callbacks.losses._target_=tests.helpers.StepLosses",
            f"+callbacks.losses.out_file={out}",
            output_dir=tmp_path / name,
        )
        run(cfg)
        losses[name] = torch.tensor(torch.load(out))
    assert len(losses["single"]) == 10 and losses["single"][-1] < losses["single"][0]
    for name in ("ddp", "fsdp", "model_parallel", "fsdp_options"):
        assert torch.allclose(losses[name], losses["single"], rtol=1e-5, atol=1e-6), (name, losses[name])


@pytest.mark.parametrize("strategy", ["fsdp", "model_parallel"])
def test_sharded_run_resumes_consolidates_and_shards_its_state(compose_cfg, tmp_path: Path, strategy: str) -> None:
    common = [
        *TWO_RANKS[strategy],
        "data.train_size=8192",  # 32 steps per epoch
        "trainer.max_epochs=2",
        "trainer.deterministic=true",
        "callbacks.last_checkpoint.every_n_train_steps=5",
        "test=false",
    ]
    probe = tmp_path / "probe"
    whole = run(
        compose_cfg(
            *common,
            "+callbacks.probe._target_=tests.helpers.ShardProbe",
            f"+callbacks.probe.out_dir={probe}",
            output_dir=tmp_path / "whole",
        )
    )

    # The model of the sharded checkpoint, gathered into a plain AgentMLP, computes what the ranks computed.
    whole_last = tmp_path / "whole" / "checkpoints" / "last.ckpt"
    assert whole_last.is_dir()  # a distributed checkpoint: one shard file per rank
    plain = load_agent(whole_last)
    probe_input = torch.randn(16, 128, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(plain(probe_input), torch.load(probe / "outputs.pt"), atol=1e-5)

    # Each rank holds about half of the parameters (DDP holds all of them on every rank).
    full_bytes = sum(p.numel() * 4 for p in AgentMLP().parameters())
    per_rank = [torch.load(probe / f"param_bytes_rank{r}.pt") for r in range(2)]
    assert all(0.45 * full_bytes <= b <= 0.55 * full_bytes for b in per_rank), (per_rank, full_bytes)

    # Killed mid-epoch, resumed from the sharded last.ckpt: the same final numbers.
    with pytest.raises(LaunchError):
        run(
            compose_cfg(
                *common,
                "+callbacks.crash._target_=tests.helpers.CrashAtStep",
                "+callbacks.crash.step=45",
                output_dir=tmp_path / "cut",
            )
        )
    cut_last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    resumed = run(compose_cfg(*common, f"ckpt_path={cut_last}", output_dir=tmp_path / "cut"))
    assert resumed["val/acc"] == pytest.approx(whole["val/acc"], abs=1e-6)
    assert resumed["val/loss"] == pytest.approx(whole["val/loss"], abs=1e-5)
    resumed_model = load_agent(cut_last)
    assert all(
        torch.allclose(a, b, atol=1e-5)
        for a, b in zip(resumed_model.state_dict().values(), plain.state_dict().values(), strict=True)
    )


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_on_localhost_train_two_dimensional_parallelism(tmp_path: Path) -> None:
    """Two launcher processes meet at one rendezvous: 2 nodes x 2 ranks = dp(2) x tp(2)."""
    import os
    import signal
    import subprocess
    import sys

    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "agent_lightning.train",
        "strategy=model_parallel",
        "strategy.tensor_parallel=2",
        "devices=2",
        "num_nodes=2",
        f"rdzv_endpoint=127.0.0.1:{port}",
        "rdzv_id=two-nodes",
        "data.train_size=8192",
        "data.val_size=1024",
        "data.test_size=1024",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    nodes = [
        subprocess.Popen(
            command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        for _ in range(2)
    ]
    try:
        outputs = [node.communicate(timeout=240)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert all("Final:" in out for out in outputs)
    assert sum("GLOBAL_RANK: 0" in out for out in outputs) == 1  # one node holds global rank 0
    plain = load_agent(tmp_path / "run" / "checkpoints" / "last.ckpt")  # written by all 4 ranks
    assert isinstance(plain, AgentMLP)
    val_acc = float(outputs[0].split("val/acc=")[1].split()[0])
    assert val_acc > 0.5

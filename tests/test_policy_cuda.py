"""Policy on a CUDA device acts as on the CPU (skipped without one; needs neither Lightning nor Hydra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from agent_lightning import Policy
from agent_lightning.errors import ConfigError
from agent_lightning.export import write_model
from agent_lightning.model import AgentMLP

CONFIG = {"input_dim": 8, "hidden_dim": 64, "num_layers": 2, "output_dim": 5}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _model() -> AgentMLP:
    torch.manual_seed(0)
    model = AgentMLP(**CONFIG).eval()
    model.normalizer.set_statistics(torch.full((8,), 50.0), torch.full((8,), 20.0))
    return model


def _obs(rows: int) -> np.ndarray:
    return np.random.default_rng(1).normal(50, 20, size=(rows, 8)).astype(np.float32)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_without_it_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"device='cuda': no CUDA device is available here"):
        Policy(_model(), device="cuda")


@cuda
@pytest.mark.parametrize("fmt", ["torch", "torchscript", "safetensors"])
def test_a_policy_on_cuda_acts_like_on_the_cpu(fmt: str, tmp_path: Path) -> None:
    if fmt == "safetensors":
        pytest.importorskip("safetensors")
    path = tmp_path / f"agent.{fmt}"
    write_model(_model(), CONFIG, path, fmt)
    on_cpu, on_gpu = Policy(_model()), Policy.load(path, device="cuda")
    assert on_gpu.device.type == "cuda"
    obs = _obs(4096)
    cpu_logits, gpu_logits = on_cpu.logits(obs), on_gpu.logits(obs)
    assert gpu_logits.device.type == "cuda"
    torch.testing.assert_close(gpu_logits.cpu(), cpu_logits, rtol=1e-4, atol=1e-4)
    top2 = cpu_logits.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1] > 1e-3).numpy()  # rows whose argmax cannot flip by rounding
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(on_gpu.act(obs)[clear], on_cpu.act(obs)[clear])
    assert isinstance(on_gpu.act(obs[0]), int)
    assert on_gpu.act(torch.from_numpy(obs).cuda()).shape == (4096,)  # a CUDA tensor in, actions out


@cuda
def test_onnx_on_cuda_uses_the_cuda_provider_or_says_what_is_missing(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = tmp_path / "agent.onnx"
    write_model(_model(), CONFIG, path, "onnx")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ConfigError, match=r"no CUDAExecutionProvider \(install onnxruntime-gpu"):
            Policy.load(path, device="cuda")
        return
    obs = _obs(512)
    torch.testing.assert_close(
        Policy.load(path, device="cuda").logits(obs), Policy(_model()).logits(obs), atol=1e-4, rtol=1e-4
    )

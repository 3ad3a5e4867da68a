"""Load any file a trained policy can be in, as a model for `agent_lightning.Policy`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from agent_lightning.errors import ConfigError
from agent_lightning.formats.registry import SUFFIXES, WEIGHTS_SUFFIXES, is_torchscript_archive


def load_policy_model(path: Path, device: torch.device) -> tuple[Any, dict[str, Any]]:
    """(model or logits function, its dims when not an AgentMLP and the names its file keeps) for `path`."""
    from agent_lightning.export import load_agent  # torch only: no Lightning on the inference path

    if not path.exists():
        raise ConfigError(f"{path} does not exist")
    if path.is_dir():  # a sharded checkpoint (strategy=fsdp / model_parallel)
        return load_agent(path).to(device), {}
    suffix = SUFFIXES.get(path.suffix.lower())
    if suffix == "onnx":
        from agent_lightning.formats import onnx_file

        return onnx_file.read(path, device)
    if suffix == "safetensors":
        from agent_lightning.formats import safetensors_file

        return safetensors_file.read(path).to(device), {}
    program = suffix == "torchscript" or is_torchscript_archive(path)
    if program and path.suffix.lower() in WEIGHTS_SUFFIXES:  # a program in a file named for weights: not run unasked
        raise ConfigError(
            f"{path} is a TorchScript program, not weights: it runs its own code when it acts; to run it as a "
            f"policy, name it {path.with_suffix('.ts').name}"
        )
    if program:
        from agent_lightning.formats import torchscript_file

        return torchscript_file.read(path, device)
    return load_agent(path).to(device), {}  # a Lightning .ckpt or a torch export (.pt), read weights-only

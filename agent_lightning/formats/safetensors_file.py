"""safetensors export: the weights as plain tensors, the model config as JSON in the file's metadata.

Reading a safetensors file never runs code, whoever wrote it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import Tensor

from agent_lightning.errors import ConfigError
from agent_lightning.formats.registry import require_extra
from agent_lightning.model import AgentMLP
from agent_lightning.runs.data_schema import SCHEMA_KEY, DataSchema

CONFIG_KEY = "agent_lightning.model_config"


def write(model: AgentMLP, config: dict[str, Any], path: Path, schema: DataSchema) -> None:
    """Write the model's weights (normaliser included), its config and its data's names to `path`."""
    st = require_extra("safetensors.torch", "format=safetensors")
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    metadata = {CONFIG_KEY: json.dumps(config), SCHEMA_KEY: schema.to_json(), "format": "pt"}
    st.save_file(state, str(path), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)  # safetensors creates the file owner-only; an export is shared like the others


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file (its header only, no tensors read)."""
    safetensors = require_extra("safetensors", "reading a .safetensors file")
    try:
        with safetensors.safe_open(str(path), framework="pt") as stored:
            return dict(stored.metadata() or {})
    except Exception as err:  # truncated or not a safetensors file
        reason = str(err).strip() or type(err).__name__
        raise ConfigError(f"{path} is not a readable safetensors file ({reason})") from None


def read_state(path: Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """The weights in a safetensors file, and the model config `write` stores with them (else None)."""
    safetensors = require_extra("safetensors", "reading a .safetensors file")
    try:
        with safetensors.safe_open(str(path), framework="pt") as stored:
            metadata = stored.metadata() or {}
            state = {name: stored.get_tensor(name) for name in stored.keys()}  # noqa: SIM118 (not a dict)
    except Exception as err:  # truncated or not a safetensors file
        reason = str(err).strip() or type(err).__name__
        raise ConfigError(f"{path} is not a readable safetensors file ({reason})") from None
    return state, json.loads(metadata[CONFIG_KEY]) if CONFIG_KEY in metadata else None


def read(path: Path) -> AgentMLP:
    """The `AgentMLP` stored in a safetensors file written by `write`, in eval mode on the CPU."""
    state, config = read_state(path)
    if config is None:
        raise ConfigError(f"{path} has no {CONFIG_KEY!r} in its metadata: export it with `agent_lightning.export`")
    from agent_lightning.export import build_agent

    return build_agent(config, state, path)

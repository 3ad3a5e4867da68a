"""safetensors export: the weights as plain tensors, the model config as JSON in the file's metadata.

Reading a safetensors file never runs code, whoever wrote it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from agent_lightning.errors import ConfigError
from agent_lightning.formats.registry import require_extra
from agent_lightning.model import AgentMLP

CONFIG_KEY = "agent_lightning.model_config"


def write(model: AgentMLP, config: dict[str, Any], path: Path) -> None:
    """Write the model's weights (normaliser included) and its config to `path`."""
    st = require_extra("safetensors.torch", "format=safetensors")
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    st.save_file(state, str(path), metadata={CONFIG_KEY: json.dumps(config), "format": "pt"})
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)  # safetensors creates the file owner-only; an export is shared like the others


def read(path: Path) -> AgentMLP:
    """The `AgentMLP` stored in a safetensors file written by `write`, in eval mode on the CPU."""
    safetensors = require_extra("safetensors", "reading a .safetensors file")
    try:
        with safetensors.safe_open(str(path), framework="pt") as stored:
            metadata = stored.metadata() or {}
            state = {name: stored.get_tensor(name) for name in stored.keys()}  # noqa: SIM118 (not a dict)
    except Exception as err:  # truncated or not a safetensors file
        reason = str(err).strip() or type(err).__name__
        raise ConfigError(f"{path} is not a readable safetensors file ({reason})") from None
    if CONFIG_KEY not in metadata:
        raise ConfigError(f"{path} has no {CONFIG_KEY!r} in its metadata: export it with `agent_lightning.export`")
    config = json.loads(metadata[CONFIG_KEY])
    model = AgentMLP(**config)
    try:
        model.load_state_dict({name: tensor.float() for name, tensor in state.items()})
    except RuntimeError as err:
        reason = str(err).splitlines()[-1].strip()
        raise ConfigError(f"{path}: its weights do not fit its model config ({reason})") from None
    return model.eval()

"""TorchScript export: the scripted model (normaliser included) for C++/libtorch or Python without this package.

The model config travels as an extra file inside the archive. Loading runs the archive's TorchScript,
a restricted language with no access to Python: still, load only archives you exported yourself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from agent_lightning.errors import ConfigError
from agent_lightning.model import AgentMLP

CONFIG_FILE = "model_config.json"


def write(model: AgentMLP, config: dict[str, Any], path: Path) -> None:
    """Script the model and save it with its config."""
    scripted = torch.jit.script(model.cpu().eval())
    torch.jit.save(scripted, str(path), _extra_files={CONFIG_FILE: json.dumps(config)})


def read(path: Path, device: torch.device) -> tuple[torch.jit.ScriptModule, dict[str, int]]:
    """The scripted model on `device`, and its observation width and action count."""
    extra = {CONFIG_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"{path} is not a readable TorchScript archive ({first})") from None
    if not extra[CONFIG_FILE]:
        raise ConfigError(f"{path} has no {CONFIG_FILE} inside: export it with `agent_lightning.export`")
    config = json.loads(extra[CONFIG_FILE])
    return module.eval(), {"obs_dim": int(config["input_dim"]), "n_actions": int(config["output_dim"])}

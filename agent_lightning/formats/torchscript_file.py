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
from agent_lightning.runs.data_schema import DataSchema

CONFIG_FILE = "model_config.json"
SCHEMA_FILE = "data_schema.json"  # its data's feature columns and class names


def write(model: AgentMLP, config: dict[str, Any], path: Path, schema: DataSchema) -> None:
    """Script the model and save it with its config and its data's names."""
    scripted = torch.jit.script(model.cpu().eval())
    torch.jit.save(scripted, str(path), _extra_files={CONFIG_FILE: json.dumps(config), SCHEMA_FILE: schema.to_json()})


def read(path: Path, device: torch.device) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """The scripted model on `device`, its observation width and action count, and its data's names."""
    extra = {CONFIG_FILE: "", SCHEMA_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"{path} is not a readable TorchScript archive ({first})") from None
    if not extra[CONFIG_FILE]:
        raise ConfigError(f"{path} has no {CONFIG_FILE} inside: export it with `agent_lightning.export`")
    config = json.loads(extra[CONFIG_FILE])
    dims = {"obs_dim": int(config["input_dim"]), "n_actions": int(config["output_dim"])}
    return module.eval(), {**dims, **DataSchema.from_json(extra[SCHEMA_FILE]).as_names()}
